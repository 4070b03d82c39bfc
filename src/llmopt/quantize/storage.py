"""The "quantized" checkpoint format: packed integer codes, scales, zero points, bitmask.

A folder holds `config.json` (and tokenizer files), `llmopt.json` with
`"format": "quantized"` (written by the stage), and `WEIGHTS_FILE`, where the
weight `NAME` of every quantized module is stored as

- `NAME::codes`: uint8, the unsigned codes of the (out, in) weight in row-major
  order, two to a byte at 4 bits (first code in the low nibble);
- `NAME::scales`: float16 (out, groups);
- `NAME::zeros`: uint8 (out, groups), asymmetric grids only;
- `NAME::bitmask`: uint8, one bit per weight (little-endian bit order), set
  where the weight is not zero; only when that is smaller, and then `::codes`
  holds the codes of the set positions only (a zero is code = zero point);

and every other tensor as it is. The header metadata (one JSON entry) lists each quantized
weight with its bits, group size, symmetry, (out, in) shape and whether it is
sparse, and the aliases of tied tensors. 4-bit codes with a float16 scale per
128 weights cost 4.125 bits per weight: 0.129x of float32.

Loading checks every header value (names, shapes, dtypes, sizes, grid
settings) against the model that config.json describes, built on the meta
device, before any real tensor is allocated; a file that disagrees is
refused with `BadInput`.
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
from llmopt.quantize.check import meta_model
from llmopt.quantize.grid import dequantize_codes, expand_groups, pack_codes, packed_size
from llmopt.quantize.grid import unpack_codes as _unpack
from llmopt.quantize.state import (
    QuantState,
    attach,
    current_codes,
    is_quantizable,
    matrix,
    quantized_modules,
    state_of,
)

WEIGHTS_FILE = "quantized_model.safetensors"
FORMAT = "llmopt-quantized"
HEADER_KEY = "llmopt"
CODES, SCALES, ZEROS, MASK = "::codes", "::scales", "::zeros", "::bitmask"
SUFFIXES = (CODES, SCALES, ZEROS, MASK)
LAYER_KEYS = {"bits", "group_size", "symmetric", "shape", "sparse"}


def _encode(name: str, module: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """The stored parts of one quantized weight and its header entry."""
    state = state_of(module)
    assert state is not None
    codes = current_codes(module)
    if codes is None:
        raise BadInput(
            f"{name}: the weight left its {state.bits}-bit grid (was it changed after "
            "quantizing, e.g. trained?); save it in another format or quantize it again"
        )
    rows, cols = codes.shape
    flat = codes.flatten().numpy()
    zero_codes = expand_groups(state.zero, cols).to(torch.uint8).flatten().numpy()
    keep = flat != zero_codes
    kept = int(keep.sum())
    mask_bytes = (flat.size + 7) // 8
    sparse = mask_bytes + packed_size(kept, state.bits) < packed_size(flat.size, state.bits)
    parts = {SCALES: state.scale.half().contiguous()}
    if not state.symmetric:
        parts[ZEROS] = state.zero.to(torch.uint8).contiguous()
    if sparse:
        parts[MASK] = torch.from_numpy(np.packbits(keep, bitorder="little"))
        parts[CODES] = torch.from_numpy(pack_codes(flat[keep], state.bits))
    else:
        parts[CODES] = torch.from_numpy(pack_codes(flat, state.bits))
    entry = {**state.describe(), "shape": [rows, cols], "sparse": sparse}
    return {name + suffix: t for suffix, t in parts.items()}, entry


def save_quantized_model(model: nn.Module, folder: str | Path) -> dict:
    """Write `config.json` (and generation config) and the packed weights into `folder`.

    Returns:
        {"quantized_tensors", "sparse_tensors", "dense_tensors": counts,
         "quantized_bytes": bytes of the quantized weights' stored parts,
         "quantized_fp32_bytes": what those weights cost in float32}.

    Raises:
        BadInput: the model carries no quantization grid, or a quantized weight
            is no longer on its grid.
    """
    from safetensors.torch import save_file

    modules = quantized_modules(model)
    if not modules:
        raise BadInput("this model is not quantized; save it as an ordinary checkpoint")
    by_key = {f"{name}.weight": module for name, module in modules.items()}
    tensors, aliases = unique_state(model)
    out: dict[str, torch.Tensor] = {}
    layers: dict[str, dict] = {}
    quantized_bytes = fp32_bytes = 0
    for name, t in tensors.items():
        module = by_key.get(name)
        if module is None:
            out[name] = t.detach().cpu().contiguous()
            continue
        parts, layers[name] = _encode(name, module)
        out.update(parts)
        quantized_bytes += sum(p.numel() * p.element_size() for p in parts.values())
        fp32_bytes += 4 * t.numel()
    folder = Path(folder)
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    # One metadata key: safetensors writes its metadata map in no fixed order, and a
    # single entry keeps the file byte-for-byte reproducible.
    header = {"format": FORMAT, "version": 1, "layers": layers, "aliases": aliases}
    metadata = {HEADER_KEY: json.dumps(header, sort_keys=True)}
    save_file(out, str(folder / WEIGHTS_FILE), metadata=metadata)
    return {
        "quantized_tensors": len(layers),
        "sparse_tensors": sum(1 for e in layers.values() if e["sparse"]),
        "dense_tensors": len(tensors) - len(layers),
        "quantized_bytes": quantized_bytes,
        "quantized_fp32_bytes": fp32_bytes,
    }


def load_quantized_model(folder: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild a quantized folder as a float model in eval mode, grids re-attached.

    Every weight is dequantized exactly (float32, then cast to `dtype`); a later
    `save_quantized_model` writes the same bytes again.

    Raises:
        BadInput: the weights file is missing, unreadable, or disagrees with
            config.json in any name, shape, dtype, size or grid setting.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise BadInput(f"{folder}: quantized checkpoint without {WEIGHTS_FILE}")
    config = read_config(folder, str(folder))
    try:
        with safe_open(str(path), framework="pt") as handle:
            # Every block stores at least one tensor: a config.json claiming more blocks
            # than the file has tensors is refused before building even the meta model.
            blocks = getattr(config, "num_hidden_layers", None)
            if not isinstance(blocks, int) or not 0 < blocks <= len(handle.keys()):
                raise BadInput(f"{path}: {blocks!r} blocks in config.json do not fit the file")
            plan = _Plan.check(handle, meta_model(config), path)
            model = empty_model(config, dtype)
            plan.fill(model, handle, dtype)
    except SafetensorError as err:
        raise BadInput(f"{path}: unreadable weights file ({err})") from None
    return model.eval()


class _Plan:
    """A weights file checked against the meta model, ready to fill a real one."""

    def __init__(self, layers: dict[str, dict], dense: list[str], aliases: dict[str, str]):
        self.layers, self.dense, self.aliases = layers, dense, aliases

    @classmethod
    def check(cls, handle, meta: nn.Module, path: Path) -> _Plan:
        """Validate the header of an open safetensors file; allocates nothing large."""

        def bad(why: str) -> BadInput:
            return BadInput(f"{path}: corrupt quantized checkpoint ({why})")

        try:
            header = json.loads((handle.metadata() or {})[HEADER_KEY])
        except (KeyError, json.JSONDecodeError) as err:
            raise bad(f"header metadata: {err}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise bad(f"not a {FORMAT} file")
        layers, aliases = header.get("layers"), header.get("aliases")
        if not isinstance(layers, dict) or not isinstance(aliases, dict):
            raise bad("header metadata is not a mapping")
        expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
        stored = set(handle.keys())
        modules = dict(meta.named_modules())
        for name, entry in layers.items():
            _check_layer(name, entry, expected, modules, handle, stored, bad)
        for alias, target in aliases.items():
            if alias not in expected or target not in expected or alias in stored:
                raise bad(f"alias {alias!r} -> {target!r}")
            if expected[alias] != expected[target]:
                raise bad(f"alias {alias!r} has another shape than {target!r}")
        dense = [k for k in stored if not k.endswith(SUFFIXES)]
        for key in dense:
            if key not in expected or key in layers:
                raise bad(f"unexpected tensor {key!r}")
            shape = tuple(handle.get_slice(key).get_shape())
            if shape != expected[key]:
                raise bad(f"{key}: shape {list(shape)}, config.json implies {list(expected[key])}")
        parts = {k.rpartition("::")[0] for k in stored if k.endswith(SUFFIXES)}
        if parts - set(layers):
            raise bad(f"parts of an unlisted layer {sorted(parts - set(layers))[0]!r}")
        missing = set(expected) - set(dense) - set(layers) - set(aliases)
        if missing:
            raise bad(f"missing tensor {sorted(missing)[0]!r}")
        return cls(layers, dense, aliases)

    def fill(self, model: nn.Module, handle, dtype: torch.dtype) -> None:
        """Copy every stored tensor into `model` and attach the grids."""
        params = dict(model.state_dict(keep_vars=True))
        with torch.no_grad():
            for key in self.dense:
                params[key].copy_(handle.get_tensor(key).to(dtype=params[key].dtype))
            grids: dict[int, QuantState] = {}
            for key, entry in self.layers.items():
                module = model.get_submodule(key.rpartition(".")[0])
                state, weight = _decode(key, entry, handle)
                matrix(module).copy_(weight.to(dtype))
                attach(module, state)
                grids[matrix(module).untyped_storage().data_ptr()] = state
            for alias, target in self.aliases.items():
                if params[alias].data_ptr() != params[target].data_ptr():
                    params[alias].copy_(params[target])
            # Tied partners of a quantized matrix carry its grid too.
            for module in model.modules():
                if is_quantizable(module) and state_of(module) is None:
                    state = grids.get(matrix(module).untyped_storage().data_ptr())
                    if state is not None:
                        attach(module, state)


def _check_layer(name, entry, expected, modules, handle, stored, bad) -> None:
    """One quantized weight's header entry against the meta model and the stored parts."""
    if not isinstance(entry, dict) or set(entry) != LAYER_KEYS:
        raise bad(f"{name}: header entry must have the keys {sorted(LAYER_KEYS)}")
    module = modules.get(name.rpartition(".")[0])
    if name not in expected or module is None or not is_quantizable(module):
        raise bad(f"{name}: not the weight of a linear or embedding of this model")
    bits, group = entry["bits"], entry["group_size"]
    symmetric, sparse = entry["symmetric"], entry["sparse"]
    shape = list(matrix(module).shape)
    if entry["shape"] != shape:
        raise bad(f"{name}: shape {entry['shape']}, config.json implies {shape}")
    if bits not in (4, 8) or not isinstance(symmetric, bool) or not isinstance(sparse, bool):
        raise bad(f"{name}: bits {bits!r}, symmetric {symmetric!r}, sparse {sparse!r}")
    rows, cols = shape
    if group is not None and (type(group) is not int or group < 1 or cols % group):
        raise bad(f"{name}: group size {group!r} does not divide the width {cols}")
    n_groups = 1 if group is None else cols // group
    want = {SCALES: ("F16", [rows, n_groups])}
    if not symmetric:
        want[ZEROS] = ("U8", [rows, n_groups])
    if sparse:
        want[MASK] = ("U8", [(rows * cols + 7) // 8])
    present = {s for s in SUFFIXES if name + s in stored}
    if present != set(want) | {CODES}:
        raise bad(f"{name}: stored parts {sorted(present)}, expected {sorted(set(want) | {CODES})}")
    for suffix, (dtype, want_shape) in want.items():
        part = handle.get_slice(name + suffix)
        if part.get_dtype() != dtype or list(part.get_shape()) != want_shape:
            got = f"{part.get_dtype()} {part.get_shape()}"
            raise bad(f"{name}{suffix}: {got}, want {dtype} {want_shape}")
    count = rows * cols
    if sparse:  # the mask is small (1 bit per weight) and already size-checked
        bits_set = np.unpackbits(handle.get_tensor(name + MASK).numpy(), bitorder="little")
        count = int(bits_set[: rows * cols].sum())
    codes = handle.get_slice(name + CODES)
    size = packed_size(count, bits)
    if codes.get_dtype() != "U8" or list(codes.get_shape()) != [size]:
        raise bad(f"{name}{CODES}: {codes.get_dtype()} {codes.get_shape()}, want U8 [{size}]")


def _decode(name: str, entry: dict, handle) -> tuple[QuantState, torch.Tensor]:
    """The grid and the dequantized float32 (out, in) weight of one stored layer."""
    rows, cols = entry["shape"]
    bits, symmetric = entry["bits"], entry["symmetric"]
    scale = handle.get_tensor(name + SCALES).float()
    if symmetric:
        zero = torch.full_like(scale, float(1 << (bits - 1)))
    else:
        zero = handle.get_tensor(name + ZEROS).float()
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()) or zero.max() >= 1 << bits:
        raise BadInput(f"{name}: corrupt quantized checkpoint (scales or zero points out of range)")
    full_zero = expand_groups(zero, cols)
    packed = handle.get_tensor(name + CODES).numpy()
    if entry["sparse"]:
        bits_set = handle.get_tensor(name + MASK).numpy()
        keep = np.unpackbits(bits_set, count=rows * cols, bitorder="little").astype(bool)
        codes = full_zero.flatten().to(torch.uint8).numpy().copy()
        codes[keep] = _unpack(packed, bits, int(keep.sum()))
    else:
        codes = _unpack(packed, bits, rows * cols)
    codes_t = torch.from_numpy(codes.astype(np.uint8)).view(rows, cols)
    weight = dequantize_codes(codes_t, expand_groups(scale, cols), full_zero)
    state = QuantState(bits, entry["group_size"], symmetric, scale, zero)
    return state, weight


def holds(model: nn.Module) -> bool:
    """True when the model is quantized and every quantized weight is still on its grid."""
    modules = quantized_modules(model)
    return bool(modules) and all(current_codes(m) is not None for m in modules.values())


def _save(model: nn.Module, folder: Path, requested: str | None) -> tuple[str, dict]:
    return "quantized", save_quantized_model(model, folder)


QUANTIZED = CheckpointFormat(
    name="quantized",
    description="packed integer codes, float16 scales (and zero points, bitmask)",
    save=_save,
    load=load_quantized_model,
    holds=holds,
)
"""The registered format. A model trained after quantizing left its grid: it is then
saved dense unless this format is asked for (which refuses it)."""
