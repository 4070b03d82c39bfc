"""Export a quantized model in the compressed-tensors layout that vLLM serves.

The layout is llm-compressor's W4A16 / W8A16 "pack-quantized" format: every
quantized linear `NAME` is stored as

- `NAME.weight_packed`: int32 (out, ceil(in * bits / 32)), the signed codes
  q = code - 2^(bits-1) offset back to unsigned and packed densely, code i of a
  row at bit i * bits (little end first);
- `NAME.weight_scale`: (out, groups) scales (float16 here: llmopt scales are
  float16 values, so nothing is rounded);
- `NAME.weight_shape`: int64 [out, in];
- `NAME.weight_zero_point`: the signed zero points packed the same way along
  the output dimension, for asymmetric grids only;

with `quantization_config` in config.json naming the scheme of each group of
layers. llmopt's grids are exactly this scheme (symmetric: zero point at the
middle of the grid; scales per output channel or per group), so the export
copies codes and scales without rounding anything again. Linears that are
not quantized (the head, skipped layers) are listed as ignored and written as
they are, like every other tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.models.arch import ArchAdapter
from llmopt.outputs import staged_output
from llmopt.quantize.state import QuantState, current_codes, state_of

WEIGHTS_FILE = "model.safetensors"


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned (rows, cols) codes of 4 or 8 bits into int32 words along the columns."""
    per_word = 32 // bits
    rows, cols = codes.shape
    words = -(-cols // per_word)
    padded = np.zeros((rows, words * per_word), dtype=np.uint32)
    padded[:, :cols] = codes.numpy().astype(np.uint32)
    groups = padded.reshape(rows, words, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * bits).reshape(1, 1, per_word)
    packed = np.bitwise_or.reduce(groups << shifts, axis=2).astype(np.uint32)
    return torch.from_numpy(packed.view(np.int32).copy())


def _scheme(state: QuantState) -> dict:
    weights = {
        "num_bits": state.bits,
        "type": "int",
        "symmetric": state.symmetric,
        "strategy": "channel" if state.group_size is None else "group",
        "group_size": state.group_size,
        "dynamic": False,
        "actorder": None,
        "observer": "minmax",
        "observer_kwargs": {},
        "block_structure": None,
    }
    return {
        "weights": weights,
        "input_activations": None,
        "output_activations": None,
        "format": "pack-quantized",
    }


def _compress(name: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """The packed tensors of one quantized linear."""
    state = state_of(module)
    assert state is not None
    codes = current_codes(module)
    if codes is None:
        raise BadInput(f"{name}: the weight left its {state.bits}-bit grid; quantize it again")
    rows, cols = codes.shape
    out = {
        f"{name}.weight_packed": pack_int32(codes, state.bits),
        f"{name}.weight_scale": state.scale.half().contiguous(),
        f"{name}.weight_shape": torch.tensor([rows, cols], dtype=torch.int64),
    }
    if not state.symmetric:
        # zero points are stored signed (z - 2^(bits-1)) and packed along the output rows
        zero = pack_int32(state.zero.to(torch.uint8).T, state.bits).T
        out[f"{name}.weight_zero_point"] = zero.contiguous()
    return out


def _linears(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def export_compressed_tensors(model: nn.Module, tokenizer, folder: str | Path) -> dict:
    """Write a quantized model as a compressed-tensors checkpoint folder (atomically).

    Args:
        model: a model quantized by llmopt (decoder linears on their grids).
        tokenizer: its tokenizer (saved alongside), or None.
        folder: the output folder (must not exist yet, or be empty).

    Returns:
        {"path", "bytes", "compressed_layers", "ignored_linears", "schemes"}.

    Raises:
        BadInput: the model has no quantized nn.Linear (not quantized, or a family
            such as GPT-2 whose Conv1D layers vLLM cannot load packed), or a
            quantized weight left its grid.
    """
    from safetensors.torch import save_file

    blocks = ArchAdapter(model).blocks_path + "."
    linears = _linears(model)
    chosen = {n: m for n, m in linears.items() if n.startswith(blocks) and state_of(m)}
    if not chosen:
        raise BadInput(
            "compressed-tensors export: no quantized nn.Linear in the decoder blocks "
            "(quantize the model first; GPT-2's Conv1D layers are not supported)"
        )
    groups: dict[str, dict] = {}
    for name, module in chosen.items():
        scheme = json.dumps(_scheme(state_of(module)), sort_keys=True)
        groups.setdefault(scheme, {"targets": []})["targets"].append(name)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in chosen.items():
        tensors.update(_compress(name, module))
    seen: set[tuple] = set()
    for key, t in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner in chosen and key.endswith(".weight"):
            continue
        storage = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if storage in seen:
            continue  # a tied head: transformers and vLLM re-tie it from the config
        seen.add(storage)
        tensors[key] = t.detach().cpu().contiguous()
    ignored = sorted(n for n in linears if n not in chosen)
    config = {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            f"group_{i}": {**json.loads(scheme), "targets": sorted(g["targets"])}
            for i, (scheme, g) in enumerate(groups.items())
        },
        "ignore": ignored,
        "kv_cache_scheme": None,
        "global_compression_ratio": None,
        "sparsity_config": {},
    }
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInput(f"--output {folder}: exists and is not an empty folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_output(folder) as tmp:  # whole or nothing, and the user's file modes
        model.config.save_pretrained(tmp)
        settings = json.loads((tmp / "config.json").read_text())
        settings["quantization_config"] = config
        (tmp / "config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    return {
        "path": str(folder),
        "bytes": (folder / WEIGHTS_FILE).stat().st_size,
        "compressed_layers": len(chosen),
        "ignored_linears": ignored,
        "schemes": len(groups),
    }
