"""Export a model to one GGUF file, the format llama.cpp and Ollama run.

What a family needs is one `GGUFFamily` in `FAMILIES` (registries, not
if/elif): the llama.cpp architecture, the hyperparameter keys it reads, and
whether its q/k rows must be reordered. Tensor names come from the `gguf`
package's own HF -> GGUF name map. The hyperparameters are read off the
model itself (blocks, heads, kv heads, head size, widths), so slimmed models
with fewer heads, narrower MLPs, fewer layers or an explicit head size are
written as they are.

Tensor types follow llama.cpp's converter: 1-D tensors, norms and position
embeddings stay float32; the other matrices get the asked type, except that
at 4 bits the token embedding and output head get q8_0 (as the SmolLM2 GGUF
llmopt ships with does); rows that do not split into whole blocks fall back
(see `gguf_quants`). A weight llmopt quantized on a grid that the type holds
exactly is copied, not rounded again.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import (
    GGML_QUANT_VERSION,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    get_tensor_name_map,
)
from torch import nn

from llmopt.errors import BadInput
from llmopt.export.gguf_quants import QT, Grid, encode, fitting_type
from llmopt.export.gguf_vocab import gguf_vocab
from llmopt.models.arch import ArchAdapter
from llmopt.quantize.state import current_codes, is_quantizable, matrix, state_of

GGUF_TYPES: dict[str, GGMLQuantizationType] = {
    "f16": QT.F16,
    "q8_0": QT.Q8_0,
    "q4_0": QT.Q4_0,
    "q4_k": QT.Q4_K,
}
FILE_TYPES = {
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
    "q4_k": LlamaFileType.MOSTLY_Q4_K_S,
}


@dataclass(frozen=True)
class Shape:
    """The hyperparameters llama.cpp reads, measured on the model."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    positions: int
    vocab: int


@dataclass(frozen=True)
class GGUFFamily:
    """How one Hugging Face family is written for llama.cpp."""

    arch: MODEL_ARCH
    params: Callable[[GGUFWriter, Shape, object], None]
    rotary_rows: bool
    """HF's rotate-half rotary layout: reorder q/k rows for llama.cpp's interleaved one."""


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise BadInput(f"GGUF export: rope scaling {kind!r} has no GGUF mapping here")
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0)


def _decoder_params(writer: GGUFWriter, shape: Shape, config) -> None:
    """Llama-style keys (llama, mistral, qwen2): RMS norm, rotary, grouped kv heads."""
    writer.add_context_length(shape.positions)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    # An explicit head size (slimmed heads) differs from hidden / heads: say it.
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_key_length(shape.head_dim)
    writer.add_value_length(shape.head_dim)
    writer.add_vocab_size(shape.vocab)


def _gpt2_params(writer: GGUFWriter, shape: Shape, config) -> None:
    """GPT-2 keys: layer norm, learned positions, fused qkv."""
    writer.add_context_length(shape.positions)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_layer_norm_eps(float(config.layer_norm_epsilon))


FAMILIES: dict[str, GGUFFamily] = {
    "llama": GGUFFamily(MODEL_ARCH.LLAMA, _decoder_params, rotary_rows=True),
    "mistral": GGUFFamily(MODEL_ARCH.LLAMA, _decoder_params, rotary_rows=True),
    "qwen2": GGUFFamily(MODEL_ARCH.QWEN2, _decoder_params, rotary_rows=False),
    "gpt2": GGUFFamily(MODEL_ARCH.GPT2, _gpt2_params, rotary_rows=False),
}


def family_of(model: nn.Module) -> GGUFFamily:
    """The GGUF mapping of a model's family.

    Raises:
        BadInput: the family has no GGUF mapping.
    """
    model_type = getattr(model.config, "model_type", type(model).__name__)
    if model_type not in FAMILIES:
        raise BadInput(
            f"GGUF export: model family {model_type!r} has no GGUF mapping; "
            f"supported: {', '.join(FAMILIES)}"
        )
    return FAMILIES[model_type]


def measure_shape(model: nn.Module) -> Shape:
    """Hyperparameters from the model's modules (they are the truth after slimming).

    Raises:
        BadInput: blocks of different widths (GGUF and transformers need one).
    """
    adapter = ArchAdapter(model)
    blocks = adapter.blocks()
    widths = {matrix(adapter.block_linears(b)[adapter.spec.mlp_out[0]]).shape[1] for b in blocks}
    if len(widths) != 1:
        raise BadInput(f"GGUF export: blocks have different MLP widths {sorted(widths)}")
    embedding = adapter.embedding().weight
    return Shape(
        layers=len(blocks),
        hidden=embedding.shape[1],
        ffn=widths.pop(),
        heads=adapter.num_heads,
        kv_heads=adapter.num_kv_heads,
        head_dim=adapter.head_dim,
        positions=adapter.max_positions,
        vocab=embedding.shape[0],
    )


def _rotary_order(rows: int, heads: int) -> torch.Tensor:
    """Row order that turns HF's rotate-half q/k layout into llama.cpp's interleaved pairs."""
    return torch.arange(rows).view(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)


def _tensor_type(gguf_name: str, values: torch.Tensor, qtype: str) -> GGMLQuantizationType:
    if values.dim() == 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return QT.F32
    if gguf_name.startswith("position_embd"):
        return QT.F32
    if qtype in ("q4_0", "q4_k") and gguf_name.split(".")[0] in ("token_embd", "output"):
        return fitting_type(QT.Q8_0, values.shape[-1])
    return fitting_type(GGUF_TYPES[qtype], values.shape[-1])


def _grid(module: nn.Module, order: torch.Tensor | None) -> Grid | None:
    state = state_of(module)
    if state is None:
        return None
    codes = current_codes(module)
    if codes is None:
        return None  # the weight left its grid: export it as the float it now is
    scale, zero = state.scale, state.zero
    if order is not None:
        codes, scale, zero = codes[order], scale[order], zero[order]
    return Grid(codes, scale, zero, state.bits, state.symmetric)


class _Tensors:
    """The model's tensors under GGUF names, in GGUF layout and types."""

    def __init__(self, model: nn.Module, family: GGUFFamily, shape: Shape, qtype: str):
        self.model, self.family, self.shape, self.qtype = model, family, shape, qtype
        self.names = get_tensor_name_map(family.arch, shape.layers)
        adapter = ArchAdapter(model)
        head = adapter.head()
        self.tied = head is not None and (
            matrix(head).untyped_storage().data_ptr()
            == adapter.embedding().weight.untyped_storage().data_ptr()
        )

    def items(self):
        """Yield (gguf name, data array, GGML type, exact) for every tensor to write."""
        for key, tensor in self.model.state_dict().items():
            name = self.names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise BadInput(f"GGUF export: tensor {key!r} has no GGUF name")
            if name == "output.weight" and self.tied:
                continue  # llama.cpp ties the head to token_embd when output is absent
            module = self.model.get_submodule(key.rpartition(".")[0])
            is_matrix = key.endswith(".weight") and is_quantizable(module)
            values = matrix(module) if is_matrix else tensor
            order = self._order(name, values.shape[0])
            values = values.detach().float().cpu()
            if order is not None:
                values = values[order]
            kind = _tensor_type(name, values, self.qtype)
            grid = _grid(module, order) if is_matrix and kind != QT.F32 else None
            data, exact = encode(values.numpy(), kind, grid)
            yield name, data, kind, exact

    def _order(self, name: str, rows: int) -> torch.Tensor | None:
        if not self.family.rotary_rows:
            return None
        if ".attn_q." in name:
            return _rotary_order(rows, self.shape.heads)
        if ".attn_k." in name:
            return _rotary_order(rows, self.shape.kv_heads)
        return None


def export_gguf(model: nn.Module, tokenizer, path: str | Path, qtype: str = "q8_0") -> dict:
    """Write `model` and its tokenizer as one GGUF file at `path` (atomically).

    Args:
        model: a causal LM of a family in `FAMILIES` (any llmopt output: dense,
            slimmed, sparse or quantized).
        tokenizer: its fast byte-level BPE tokenizer.
        path: the .gguf file to write (its folder must exist).
        qtype: f16, q8_0, q4_0 or q4_k.

    Returns:
        {"path", "bytes", "type", "architecture", "tensor_types": counts per GGML
         type, "exact_tensors": llmopt grids written without rounding again}.

    Raises:
        BadInput: an unknown type, a family or tokenizer with no GGUF mapping, or
            a model GGUF cannot describe (rope scaling, uneven block widths).
    """
    if qtype not in GGUF_TYPES:
        raise BadInput(f"--type {qtype!r}: unknown; known: {', '.join(GGUF_TYPES)}")
    family = family_of(model)
    shape = measure_shape(model)
    vocab = gguf_vocab(tokenizer, shape.vocab)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    writer = GGUFWriter(str(tmp), MODEL_ARCH_NAMES[family.arch])
    types: Counter[str] = Counter()
    exact = 0
    try:
        writer.add_name(Path(str(getattr(model.config, "name_or_path", "") or "llmopt")).name)
        family.params(writer, shape, model.config)
        writer.add_file_type(int(FILE_TYPES[qtype]))
        writer.add_quantization_version(GGML_QUANT_VERSION)
        vocab.write(writer)
        for name, data, kind, is_exact in _Tensors(model, family, shape, qtype).items():
            writer.add_tensor(name, np.ascontiguousarray(data), raw_dtype=kind)
            types[kind.name] += 1
            exact += is_exact
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "type": qtype,
        "architecture": MODEL_ARCH_NAMES[family.arch],
        "tensor_types": dict(types),
        "exact_tensors": exact,
    }
