"""Preparing a Hugging Face model for training: its position limit, activation checkpointing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from torch import nn

from llmopt.errors import BadInput


def max_positions(model: nn.Module) -> int | None:
    """The model's position limit, or None for a family the adapter does not know."""
    from llmopt.models.arch import ArchAdapter

    try:
        return ArchAdapter(model).max_positions
    except (AttributeError, KeyError, ValueError, BadInput):  # a family the adapter lacks
        return None


def set_activation_checkpointing(
    model: nn.Module, enabled: bool, recompute_context: Callable[[], Any] | None = None
) -> None:
    """Turn recomputation of block activations in backward on or off (a HF model).

    `recompute_context` (a context-manager factory) is entered around each
    recomputation, so that it runs the forward's kernels and saves the same tensors.
    """
    # transformers 5 renamed gradient_* to activation_checkpointing_*; keep both working.
    if enabled:
        # Non-reentrant checkpointing works under DDP/FSDP and with inputs without grad.
        kwargs: dict[str, Any] = {"use_reentrant": False}
        if recompute_context is not None:
            kwargs["context_fn"] = lambda: (contextlib.nullcontext(), recompute_context())
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(kwargs)
        else:
            model.gradient_checkpointing_enable(kwargs)
    else:
        disable = getattr(model, "activation_checkpointing_disable", None)
        (disable or model.gradient_checkpointing_disable)()
