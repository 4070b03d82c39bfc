"""The "sparse" checkpoint format: a bitmask plus the non-zero values.

A folder holds the usual `config.json` (and tokenizer files), `llmopt.json`
with `"format": "sparse"`, and `sparse_model.safetensors` where every tensor
that is cheaper that way is stored as

- `NAME::bitmask`: one bit per element (uint8, little-endian bit order), set
  where the element's bits are not all zero, and
- `NAME::values`: those elements, in order, at their own dtype;

other tensors are stored as they are. Zeros are told by their bits, not by
`== 0`, so a stored -0.0 comes back as -0.0 and the round trip is bit-exact.
At 50% sparsity a float32 weight costs 1 + 16 bits per element instead of 32;
a 2:4 weight costs the same as 2:4 values plus 2-bit indices (1 bit/element).
Tensors that share storage (a tied head) are written once and re-tied.

`SPARSE` is the registered format (`llmopt.pipeline.formats`), so
`llmopt.load_model(folder)` and every stage read these folders; plain
transformers does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.formats import CheckpointFormat
from llmopt.models.loading import empty_model
from llmopt.models.tensors import unique_state

WEIGHTS_FILE = "sparse_model.safetensors"
MASK, VALUES = "::bitmask", "::values"
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    """Bool mask of elements whose bit pattern is not all zeros (so -0.0 counts)."""
    return t.contiguous().view(_INT_VIEW[t.element_size()]) != 0


def encode(t: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Bitmask + values of a tensor, or None when that would not be smaller."""
    flat = t.detach().cpu().contiguous().flatten()
    keep = nonzero_bits(flat)
    kept = int(keep.sum())
    if flat.numel() // 8 + 1 + kept * flat.element_size() >= flat.numel() * flat.element_size():
        return None
    bits = np.packbits(keep.numpy(), bitorder="little")
    return {MASK: torch.from_numpy(bits), VALUES: flat[keep].clone()}


def decode(bitmask: torch.Tensor, values: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Rebuild the dense tensor that `encode` stored."""
    numel = int(np.prod(shape)) if shape else 1
    keep = torch.from_numpy(
        np.unpackbits(bitmask.numpy(), count=numel, bitorder="little").astype(bool)
    )
    if int(keep.sum()) != values.numel():
        raise ValueError("bitmask and values disagree")
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[keep] = values
    return dense.view(shape)


def save_sparse_model(model: nn.Module, folder: str | Path) -> dict[str, int]:
    """Write `config.json` and the sparse weights file into `folder`.

    Returns:
        {"sparse_tensors": how many tensors were stored as bitmask + values,
         "dense_tensors": how many as they are}.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors, aliases = unique_state(model)
    out: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, t in tensors.items():
        parts = encode(t)
        if parts is None:
            out[name] = t.detach().cpu().contiguous()
        else:
            shapes[name] = list(t.shape)
            out.update({name + suffix: part for suffix, part in parts.items()})
    metadata = {
        "format": "llmopt-sparse",
        "shapes": json.dumps(shapes),
        "aliases": json.dumps(aliases),
    }
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_file(out, str(folder / WEIGHTS_FILE), metadata=metadata)
    return {"sparse_tensors": len(shapes), "dense_tensors": len(tensors) - len(shapes)}


def read_sparse_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The dense state dict stored in a sparse folder (aliases included).

    Raises:
        BadInput: the weights file is missing or inconsistent.
    """
    from safetensors import safe_open

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise BadInput(f"{folder}: sparse checkpoint without {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            shapes = json.loads(meta["shapes"])
            aliases = json.loads(meta["aliases"])
            raw = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        state: dict[str, torch.Tensor] = {}
        for key, t in raw.items():
            if not key.endswith((MASK, VALUES)):
                state[key] = t
        for name, shape in shapes.items():
            state[name] = decode(raw[name + MASK], raw[name + VALUES], shape)
        for alias, target in aliases.items():
            state[alias] = state[target]
    except (KeyError, ValueError, json.JSONDecodeError) as err:
        raise BadInput(f"{path}: corrupt sparse checkpoint ({err})") from None
    return state


def load_sparse_model(folder: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild the dense model of a sparse checkpoint folder, in eval mode.

    Raises:
        BadInput: the folder's weights do not match its config.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    model = empty_model(config, dtype)
    state = {
        k: v.to(dtype) if v.is_floating_point() else v for k, v in read_sparse_state(folder).items()
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        bad = (unexpected or missing)[0]
        raise BadInput(f"{folder}: sparse checkpoint does not match its config (tensor {bad!r})")
    return model.eval()


def _save(model: nn.Module, folder: Path, requested: str | None) -> tuple[str, dict[str, int]]:
    return "sparse", save_sparse_model(model, folder)


SPARSE = CheckpointFormat(
    name="sparse",
    description="bitmask + non-zero values: a pruned model really smaller on disk",
    save=_save,
    load=load_sparse_model,
)
