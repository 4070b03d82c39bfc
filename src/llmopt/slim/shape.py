"""Model shapes: the sizes slimming changes, the config of a shape, its parameter count.

Everything here works from a transformers config alone (no weights), so a
request can be checked, and candidate shapes counted, before a model loads.
Parameter counts are exact because they are counted, not derived: a model of
the shape is built on the meta device (no memory, a few milliseconds) and its
parameters summed, so every family's biases, norms and tied heads are right
without a formula per family.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache

import torch

from llmopt.models.arch import (
    ArchSpec,
    config_ffn_width,
    config_kv_heads,
    config_num_heads,
    config_num_layers,
    set_config_sizes,
    spec_for,
)


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder that slimming can change (uniform across layers)."""

    layers: int
    ffn: int
    """MLP channels per layer."""
    kv_groups: int
    """Key/value heads per layer; each serves `heads_per_group` query heads."""
    heads_per_group: int

    @property
    def heads(self) -> int:
        return self.kv_groups * self.heads_per_group

    def label(self, original: Shape) -> str:
        """'layers 22/30, ffn 1024/1536, heads 3x2/3x3': kept/original, heads as
        KV groups x query heads per group."""
        return (
            f"layers {self.layers}/{original.layers}, ffn {self.ffn}/{original.ffn}, "
            f"heads {self.kv_groups}x{self.heads_per_group}/"
            f"{original.kv_groups}x{original.heads_per_group}"
        )

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "heads": self.heads}


def shape_of(hf_config) -> Shape:
    """The shape of a transformers config.

    Raises:
        BadInput: the family is not supported.
    """
    spec = spec_for(hf_config.model_type)
    heads, groups = config_num_heads(hf_config), config_kv_heads(hf_config)
    return Shape(
        layers=config_num_layers(hf_config),
        ffn=config_ffn_width(spec, hf_config),
        kv_groups=groups,
        heads_per_group=heads // groups,
    )


def slim_config(hf_config, shape: Shape, kept_layers: Sequence[int] | None = None):
    """A copy of `hf_config` describing a model of `shape`.

    Args:
        hf_config: the original model's transformers config (not changed).
        shape: the new sizes.
        kept_layers: original indices of the layers kept (their per-layer config
            entries, such as `layer_types`, are kept); default: the first `shape.layers`.

    Raises:
        ValueError: the family's config cannot express the new head count.
    """
    spec = spec_for(hf_config.model_type)
    original = shape_of(hf_config)
    kept = list(kept_layers) if kept_layers is not None else list(range(shape.layers))
    if len(kept) != shape.layers:
        raise ValueError(f"{len(kept)} kept layers for a shape of {shape.layers}")
    new = copy.deepcopy(hf_config)
    for key in spec.per_layer_keys:
        values = getattr(new, key, None)
        if isinstance(values, list | tuple) and len(values) == original.layers:
            setattr(new, key, [values[i] for i in kept])
    heads_change = (shape.heads, shape.kv_groups) != (original.heads, original.kv_groups)
    set_config_sizes(
        spec,
        new,
        layers=shape.layers,
        ffn=shape.ffn,
        heads=shape.heads if heads_change else None,
        kv_heads=shape.kv_groups if heads_change else None,
    )
    return new


def heads_expressible(spec: ArchSpec) -> bool:
    """Whether the family's stock config can hold fewer heads of the same size."""
    return spec.head_dim_key is not None and spec.kv_heads_key is not None


def _meta_params(hf_config) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    # parameters() yields a tied head once, as memory holds it.
    return sum(p.numel() for p in model.parameters())


class ParamCounter:
    """Exact parameter counts of shapes of one model family and size.

    Layers are identical and each MLP channel adds the same parameters (a row
    of every `mlp_in` linear with its bias entry, a column of `mlp_out`), so

        count(shape) = base + layers * (attention(groups, heads) + ffn * per_channel)

    with the terms taken from meta-device builds of one and two layers, cached.
    """

    def __init__(self, hf_config):
        self.config = hf_config
        self.original = shape_of(hf_config)

        @cache
        def per_layer_and_base(ffn: int, kv_groups: int, heads_per_group: int) -> tuple[int, int]:
            widths = {"ffn": ffn, "kv_groups": kv_groups, "heads_per_group": heads_per_group}
            # Per-layer config entries do not change sizes: repeat layer 0's.
            one = _meta_params(slim_config(hf_config, Shape(layers=1, **widths), [0]))
            two = _meta_params(slim_config(hf_config, Shape(layers=2, **widths), [0, 0]))
            return two - one, one - (two - one)

        self._terms = per_layer_and_base

    def count(self, shape: Shape) -> int:
        """Parameters (each tied tensor once) of a model of `shape`."""
        per_layer, base = self._terms(shape.ffn, shape.kv_groups, shape.heads_per_group)
        return base + shape.layers * per_layer

    @property
    def total(self) -> int:
        """Parameters of the original shape."""
        return self.count(self.original)

    @property
    def per_channel(self) -> int:
        """Parameters one MLP channel adds to one layer."""
        o = self.original
        wide = self._terms(o.ffn, o.kv_groups, o.heads_per_group)[0]
        narrow = self._terms(o.ffn - 1, o.kv_groups, o.heads_per_group)[0]
        return wide - narrow

    def widest_ffn(self, layers: int, kv_groups: int, heads_per_group: int, budget: float) -> int:
        """The most MLP channels (at most the original's) with at most `budget` parameters;
        0 or less where even the attention alone exceeds it."""
        full = Shape(layers, self.original.ffn, kv_groups, heads_per_group)
        spare = budget - self.count(full)
        if spare >= 0:
            return self.original.ffn
        # Each channel removed from every layer frees layers * per_channel parameters.
        return self.original.ffn - math.ceil(-spare / (layers * self.per_channel))
