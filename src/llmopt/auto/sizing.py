"""Sizes of candidate models from config.json alone, to aim each candidate at the budget.

The search solves one amount per candidate (a sparsity, or how much a
structural step keeps) so that the candidate lands just under the budget:
a model that leaves budget unused is a worse model for nothing. These are
predictions for aiming only; whether a candidate meets the budget is decided
on its measured checkpoint (`llmopt.auto.evaluate`).

Counts are exact where they can be: parameters of a slimmed or shared shape
come from `ParamCounter` (meta-device builds), the block linears of a shape
likewise. Bytes follow the storage formats: float32 values, a 1-bit mask plus
the values where zeros make that smaller (the sparse format), packed codes
with float16 scales per group (the quantized format).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from llmopt.models.arch import ArchAdapter
from llmopt.slim.shape import ParamCounter, Shape, slim_config

FLOAT_BYTES = 4
SCALE_BYTES = 2


@dataclass(frozen=True)
class SizePlan:
    """What decides a candidate's size.

    Attributes:
        shape: the decoder whose unique storage remains (a shared model: K layers).
        sparsity: fraction of the block linears' weights pruned to zero.
        bits: bits per quantized weight (None: not quantized).
        quant_embeddings: the embedding (and an untied head) quantized as well.
        bitmask: zeros are stored as a bitmask where that is smaller (False for
            shared models, whose format stores every tensor whole).
        uneven: the blocks get different sparsities around `sparsity` (OWL), so each
            row's rounding may cost up to one zero.
    """

    shape: Shape
    sparsity: float = 0.0
    bits: int | None = None
    quant_embeddings: bool = False
    bitmask: bool = True
    uneven: bool = False


class Sizer:
    """Parameter, non-zero and byte counts of candidates of one input model."""

    def __init__(self, hf_config, original: dict[str, Any]):
        """Takes the input's transformers config and its measurement (unique_params,
        nonzero_params, weight_bytes: the denominators of every ratio)."""
        self.config = hf_config
        self.counter = ParamCounter(hf_config)
        self.original_shape = self.counter.original
        self.original = original
        # What the weight files hold besides the tensors (headers), taken as constant.
        self.overhead = max(0, original["weight_bytes"] - FLOAT_BYTES * self.counter.total)
        self._shapes = cache(self._linear_shapes)
        self._groups = cache(self._group_size)
        self.embedding_params = _embedding_params(hf_config)

    def params(self, shape: Shape) -> int:
        """Unique parameters of a model of `shape` (exact)."""
        return self.counter.count(shape)

    def linear(self, shape: Shape) -> int:
        """Weights of the decoder blocks' linears (what pruning and GPTQ work on)."""
        return shape.layers * sum(rows * cols for rows, cols in self._layer_linears(shape))

    def zeros(self, shape: Shape, sparsity: float, uneven: bool = False) -> int:
        """Weights pruning at `sparsity` sets to zero: floor(sparsity * inputs) in every row
        (Wanda's count; SparseGPT rounds over larger groups, so never fewer); one less per
        row where the blocks' sparsities are `uneven`."""
        per_layer = sum(
            rows * max(0, int(cols * sparsity) - uneven)
            for rows, cols in self._layer_linears(shape)
        )
        return shape.layers * per_layer

    def _layer_linears(self, shape: Shape) -> tuple[tuple[int, int], ...]:
        return self._shapes(shape.ffn, shape.kv_groups, shape.heads_per_group)

    def _linear_shapes(
        self, ffn: int, kv_groups: int, heads_per_group: int
    ) -> tuple[tuple[int, int], ...]:
        """(outputs, inputs) of every linear of one decoder layer of these widths."""
        from llmopt.models.arch import weight_out_in

        model = _meta_model(slim_config(self.config, Shape(1, ffn, kv_groups, heads_per_group)))
        adapter = ArchAdapter(model)
        linears = adapter.block_linears(adapter.blocks()[0]).values()
        return tuple(tuple(weight_out_in(m).shape) for m in linears)

    def _group_size(self, shape: Shape, bits: int) -> int:
        from llmopt.quantize.check import resolve_group_size
        from llmopt.quantize.config import QuantizeConfig

        config = QuantizeConfig(method="gptq", bits=bits)
        fitted = resolve_group_size(slim_config(self.config, shape), config)
        return fitted.group_size or self.original_shape.ffn

    def nonzero(self, plan: SizePlan) -> float:
        """Predicted non-zero parameters."""
        return self.params(plan.shape) - self.zeros(plan.shape, plan.sparsity, plan.uneven)

    def weight_bytes(self, plan: SizePlan) -> float:
        """Predicted bytes of the weight files."""
        linear = self.linear(plan.shape)
        other = self.params(plan.shape) - linear
        per_linear = self._per_weight(
            plan, self.zeros(plan.shape, plan.sparsity, plan.uneven) / linear
        )
        if plan.bits is not None and plan.quant_embeddings:
            dense = _quantized(plan.bits, self._groups(plan.shape, plan.bits), 0.0, False)
            embedded = self.embedding_params
            other_bytes = embedded * dense + (other - embedded) * FLOAT_BYTES
        else:
            other_bytes = other * FLOAT_BYTES
        return self.overhead + other_bytes + linear * per_linear

    def _per_weight(self, plan: SizePlan, sparsity: float) -> float:
        if plan.bits is not None:
            group = self._groups(plan.shape, plan.bits)
            return _quantized(plan.bits, group, sparsity, plan.bitmask)
        if plan.bitmask and sparsity > 0:
            return min(FLOAT_BYTES, 1 / 8 + FLOAT_BYTES * (1 - sparsity))
        return FLOAT_BYTES

    def ratio(self, kind: str, plan: SizePlan) -> float:
        """Predicted cost of `plan` as a fraction of the input's, for a size budget kind.

        Raises:
            KeyError: `kind` is not a size (latency is measured, not counted).
        """
        if kind == "params":
            return self.params(plan.shape) / self.original["unique_params"]
        if kind == "nonzero":
            return self.nonzero(plan) / self.original["nonzero_params"]
        if kind == "bytes":
            return self.weight_bytes(plan) / self.original["weight_bytes"]
        raise KeyError(kind)


def _quantized(bits: int, group: int, sparsity: float, bitmask: bool) -> float:
    """Bytes per weight of packed codes (a bitmask of the zeros where that is smaller)."""
    codes = bits / 8
    if bitmask and sparsity > 0:
        codes = min(codes, 1 / 8 + codes * (1 - sparsity))
    return codes + SCALE_BYTES / group


def _meta_model(hf_config):
    from llmopt.quantize.check import meta_model

    return meta_model(hf_config)


def _embedding_params(hf_config) -> int:
    """Token embedding plus an untied output head (what `quantize --embeddings --head` adds)."""
    adapter = ArchAdapter(_meta_model(slim_config(hf_config, _one_layer(hf_config))))
    embedding = adapter.embedding().weight
    head = adapter.head().weight
    return embedding.numel() + (0 if head is embedding else head.numel())


def _one_layer(hf_config) -> Shape:
    from llmopt.slim.shape import shape_of

    shape = shape_of(hf_config)
    return Shape(1, shape.ffn, shape.kv_groups, shape.heads_per_group)
