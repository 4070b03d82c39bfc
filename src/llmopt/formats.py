"""Checkpoint formats: how a model is written to a folder and read back.

`dense` is an ordinary Hugging Face folder that plain transformers loads. A
technique whose models are cheaper to store another way (a bitmask for
sparse weights, each shared tensor once, packed integers) defines its own
`CheckpointFormat` next to its code; `llmopt.pipeline.formats` lists them all,
and the name is written into `llmopt.json` so every later stage reads the
folder back the same way and, unless asked otherwise, writes it out again in
the same format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


def _always(_model: nn.Module) -> bool:
    return True


def _never(_model: nn.Module) -> bool:
    return False


@dataclass(frozen=True)
class CheckpointFormat:
    """One way of storing a model.

    Attributes:
        name: recorded in llmopt.json as `format`.
        description: one line for help texts.
        save: `save(model, folder, requested)` writes config.json and the weights
            (not the tokenizer, not llmopt.json) and returns (the format name to
            record, facts for the record). `requested` is the format the user
            asked for, for formats that can write several layouts.
        load: `load(folder, dtype)` rebuilds the model in eval mode.
        holds: whether this format can store a given model faithfully.
        binds: whether a model can only be written by this format (its tensors are
            tied in a way only this format records); such a model is always saved
            by it, with `requested` passed along.
        accepts: what a user may request for a model this format binds.
    """

    name: str
    description: str
    save: Callable[[nn.Module, Path, str | None], tuple[str, dict[str, Any]]]
    load: Callable[[Path, torch.dtype], nn.Module]
    holds: Callable[[nn.Module], bool] = _always
    binds: Callable[[nn.Module], bool] = _never
    accepts: tuple[str, ...] = ()


def _save_dense(model: nn.Module, folder: Path, requested: str | None) -> tuple[str, dict]:
    model.save_pretrained(folder, safe_serialization=True)
    return "dense", {}


def _load_dense(folder: Path, dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


DENSE = CheckpointFormat(
    name="dense",
    description="an ordinary Hugging Face checkpoint (safetensors)",
    save=_save_dense,
    load=_load_dense,
)
