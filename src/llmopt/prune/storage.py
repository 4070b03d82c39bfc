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
from llmopt.models.loading import empty_model, read_config
from llmopt.models.tensors import unique_state
from llmopt.models.validate import (
    check_config,
    expected_shapes,
    json_object,
    numel,
    parse_shape,
    read_header,
)

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
    count = int(np.prod(shape)) if shape else 1
    keep = torch.from_numpy(
        np.unpackbits(bitmask.numpy(), count=count, bitorder="little").astype(bool)
    )
    if int(keep.sum()) != values.numel():
        raise ValueError("bitmask and values disagree")
    dense = torch.zeros(count, dtype=values.dtype)
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


def check_sparse_header(
    path: Path,
    table: dict[str, tuple[str, tuple[int, ...]]],
    metadata: dict[str, str],
    expected: dict[str, tuple[int, ...]],
) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Check a sparse weights file's header against the model its config describes.

    Every number that later sizes an allocation (a stored shape, a bitmask's or
    values' length) must agree with `expected` (the skeleton's shapes), so a
    damaged or crafted header can ask for no more memory than the model needs.

    Returns:
        The stored shapes (name -> shape) and aliases (name -> stored name).

    Raises:
        BadInput: the header is inconsistent or disagrees with the config.
    """

    def bad(why: str) -> BadInput:
        return BadInput(f"{path}: corrupt sparse checkpoint ({why})")

    raw_shapes, aliases = json_object(metadata.get("shapes")), json_object(metadata.get("aliases"))
    if raw_shapes is None or aliases is None:
        raise bad("its metadata lacks the 'shapes' or 'aliases' table")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, value in raw_shapes.items():
        shape = parse_shape(value)
        if shape is None or expected.get(name) != shape:
            raise bad(f"{name!r} has shape {value!r}; config.json says {expected.get(name)!r}")
        shapes[name] = shape
    for name, (dtype, shape) in table.items():
        base, sep, _ = name.rpartition("::")
        if not sep:
            if expected.get(name) != shape:
                want = expected.get(name)
                raise bad(f"{name!r} has shape {list(shape)}; config.json says {want}")
            continue
        if base not in shapes:
            raise bad(f"{name!r} belongs to no stored shape")
        size = numel(shapes[base])
        if name.endswith(MASK) and (dtype != "U8" or shape != ((size + 7) // 8,)):
            raise bad(f"{name!r} is {dtype} {list(shape)}, not a bitmask of {size} elements")
        if name.endswith(VALUES) and (len(shape) != 1 or shape[0] > size):
            raise bad(f"{name!r} has shape {list(shape)}, more than {size} values")
    for name in shapes:
        if name + MASK not in table or name + VALUES not in table:
            raise bad(f"{name!r} lacks its bitmask or values")
    stored = {*shapes, *(n for n in table if "::" not in n)}
    for alias, target in aliases.items():
        if target not in stored or alias not in expected:
            raise bad(f"alias {alias!r} -> {target!r} names no stored tensor")
    return shapes, aliases


def read_sparse_state(
    folder: str | Path, expected: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """The dense state dict stored in a sparse folder (aliases included).

    Args:
        folder: the checkpoint folder.
        expected: every state-dict name of the model its config describes, with
            its shape (`llmopt.models.validate.expected_shapes`); the header is
            checked against it before anything is allocated.

    Raises:
        BadInput: the weights file is missing, inconsistent, or disagrees with the config.
    """
    from safetensors import safe_open

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise BadInput(f"{folder}: sparse checkpoint without {WEIGHTS_FILE}")
    table, metadata = read_header(path)
    shapes, aliases = check_sparse_header(path, table, metadata, expected)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = {key: handle.get_tensor(key) for key in table}
        state: dict[str, torch.Tensor] = {}
        for key, t in raw.items():
            if not key.endswith((MASK, VALUES)):
                state[key] = t
        for name, shape in shapes.items():
            state[name] = decode(raw[name + MASK], raw[name + VALUES], list(shape))
        for alias, target in aliases.items():
            state[alias] = state[target]
    except (KeyError, ValueError, RuntimeError) as err:
        raise BadInput(f"{path}: corrupt sparse checkpoint ({err})") from None
    return state


def load_sparse_model(folder: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild the dense model of a sparse checkpoint folder, in eval mode.

    config.json and the weights header are checked (on a meta-device skeleton)
    before anything is allocated.

    Raises:
        BadInput: config.json describes a model too large for memory, or the
            folder's weights do not match it.
    """

    config = read_config(folder, str(folder))
    expected = expected_shapes(check_config(config, str(folder), dtype))
    state = read_sparse_state(folder, expected)
    model = empty_model(config, dtype)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
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
