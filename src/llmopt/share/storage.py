"""Save and load shared models in the two storage layouts.

- `dense`: an ordinary Hugging Face folder with every layer written out (equal
  copies; with relaxation, each layer's merged weight `shared + B A`), so
  plain transformers loads it and computes the same logits. `save_pretrained`
  refuses tensors that share memory unless transformers itself declared the
  tie, so the copies are cloned into the state dict we hand it.
- `shared`: each piece of storage written once (`SHARED_WEIGHTS`), so the
  folder really is smaller; config.json carries the layout. The weights use
  their own file name on purpose: plain transformers then stops with "no
  weights file" instead of silently filling the missing layers at random.

Both write `"format": "shared"` into llmopt.json when llmopt can restore the
sharing on load (the shared layout, or dense copies of an unrelaxed model);
a dense relaxed checkpoint has merged the deltas and is an ordinary dense
model. The layout lives in config.json (`CONFIG_KEY`), so it survives any
later stage that saves the config.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.formats import CheckpointFormat
from llmopt.models.arch import ArchAdapter
from llmopt.models.loading import empty_model, read_config
from llmopt.models.tensors import storage_key, unique_state
from llmopt.models.validate import (
    check_dense_folder,
    check_fits,
    check_header_shapes,
    expected_shapes,
    read_header,
    skeleton,
)
from llmopt.share.apply import CONFIG_KEY, ShareLayout, apply_layout, layout_of
from llmopt.share.relax import LowRankDelta

SHARED_WEIGHTS = "llmopt-shared.safetensors"
STORAGE_ATTR = "llmopt_share_storage"
"""Attribute of a loaded shared model: the layout it was stored in, kept by later saves."""


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each piece of storage once, under its first name."""
    return unique_state(model)[0]


def dense_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the equivalent unshared model, under the original names.

    Relaxed linears are merged (`path.base.weight` + delta -> `path.weight`);
    decoder-block tensors that share storage with an earlier one are cloned.
    """
    state = model.state_dict()
    for path, module in model.named_modules():
        if isinstance(module, LowRankDelta):
            for key in [k for k in state if k.startswith(f"{path}.")]:
                del state[key]
            state[f"{path}.weight"] = module.merged_weight()
            if getattr(module.base, "bias", None) is not None:
                state[f"{path}.bias"] = module.base.bias.detach()
    blocks = ArchAdapter(model).blocks_path + "."
    seen: set[tuple] = set()
    for name, tensor in state.items():
        key = storage_key(tensor)
        if key in seen and name.startswith(blocks):
            state[name] = tensor.clone()
        seen.add(key)
    return state


@contextlib.contextmanager
def _layout_in_config(model: nn.Module, keep: bool) -> Iterator[None]:
    """Write the layout into the saved config.json only when llmopt can restore it."""
    saved = getattr(model.config, CONFIG_KEY, None)
    if not keep and saved is not None:
        delattr(model.config, CONFIG_KEY)
    try:
        yield
    finally:
        if saved is not None:
            setattr(model.config, CONFIG_KEY, saved)


def _save_dense(model: nn.Module, folder: Path) -> None:
    model.save_pretrained(folder, state_dict=dense_state_dict(model), safe_serialization=True)


def _save_shared(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    state = {
        name: t.detach().clone(memory_format=torch.contiguous_format)
        for name, t in unique_state_dict(model).items()
    }
    save_file(state, str(folder / SHARED_WEIGHTS), metadata={"format": "pt"})


SAVE_FORMATS: dict[str, Callable[[nn.Module, Path], None]] = {
    "dense": _save_dense,
    "shared": _save_shared,
}


def save_shared(model: nn.Module, folder: Path, requested: str | None = None) -> tuple[str, dict]:
    """Write a shared model's config.json and weights into `folder` (the "shared" format's saver).

    `requested` picks the layout: 'dense' (every layer written out) or 'shared'
    (each tensor once); None keeps the layout the model was loaded from (dense
    for a model shared in this process), so a later stage (training,
    distillation) writes what it read.

    Returns:
        The format for llmopt.json ('shared' when llmopt restores the sharing on
        load, 'dense' for a relaxed model saved with merged deltas) and the facts
        to record (block map, layout).

    Raises:
        BadInput: an unknown layout, or the model carries no sharing layout.
    """
    layout_name = requested or getattr(model, STORAGE_ATTR, "dense")
    if layout_name not in SAVE_FORMATS:
        raise BadInput(
            f"--save-format {layout_name!r}: a shared model is saved as {' or '.join(SAVE_FORMATS)}"
        )
    layout = layout_of(model)
    if layout is None:
        raise BadInput("this model is not shared; save it as an ordinary checkpoint")
    restorable = layout_name == "shared" or layout.lora_rank == 0
    with _layout_in_config(model, keep=restorable):
        SAVE_FORMATS[layout_name](model, Path(folder))
    facts = {"block_map": list(layout.plan.block_of), "layout": layout_name}
    return ("shared" if restorable else "dense"), facts


def _load_unique(model: nn.Module, weights: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(weights))
    expected = set(unique_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BadInput(f"{weights}: does not match its sharing layout ({what})")
    model.load_state_dict(state, strict=False)


def _check_unique_header(weights: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Every tensor of the unique-weights file is one the layout has, at its shape."""
    table, _ = read_header(weights)
    unknown = sorted(set(table) - set(expected))
    if unknown:
        raise BadInput(f"{weights}: does not match its sharing layout (unexpected {unknown[0]})")
    check_header_shapes(weights, table, expected)


def _checked_layout(folder: Path, config, dtype: torch.dtype) -> tuple[ShareLayout, dict]:
    """The layout in config.json, checked on a meta-device skeleton before anything is allocated.

    Returns:
        The layout and the shapes of the shared model's state dict (deltas included).

    Raises:
        BadInput: no layout, a layout that does not fit, or a model (with its
            per-layer deltas) too large for memory.
    """
    data = getattr(config, CONFIG_KEY, None)
    if not isinstance(data, dict):
        raise BadInput(f"{folder}: config.json has no {CONFIG_KEY!r} layout")
    model = skeleton(config, str(folder))
    layout = ShareLayout.from_dict(data, ArchAdapter(model).num_layers)
    apply_layout(model, layout)
    check_fits(model, str(folder), dtype)
    return layout, expected_shapes(model)


def load_shared(folder: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a folder written by `save_shared_checkpoint` with the sharing restored.

    config.json, the layout and the weights headers are checked first (see
    `llmopt.models.validate`), so a damaged file drives no allocation.

    Raises:
        BadInput: config.json has no sharing layout, the layout does not fit
            the model, the model would not fit in memory, or the weights do not
            match it.
    """
    from transformers import AutoModelForCausalLM

    config = read_config(folder, str(folder))
    layout, expected = _checked_layout(folder, config, dtype)
    weights = folder / SHARED_WEIGHTS
    if weights.is_file():
        _check_unique_header(weights, expected)
        model = empty_model(config, dtype)
        apply_layout(model, layout)
        _load_unique(model, weights)
    else:
        if layout.lora_rank:
            raise BadInput(f"{folder}: dense copies cannot hold per-layer deltas; corrupt layout")
        check_dense_folder(folder, expected)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        apply_layout(model, layout, check_equal=True)
    setattr(model, STORAGE_ATTR, "shared" if weights.is_file() else "dense")
    model.eval()
    return model


SHARED = CheckpointFormat(
    name="shared",
    description="decoder layers that share tensors: each tensor once, or dense copies",
    save=save_shared,
    load=load_shared,
    binds=lambda model: layout_of(model) is not None,
    accepts=tuple(SAVE_FORMATS),
)
"""The registered format: every model that shares layers is saved (and restored) by it."""
