"""Structural steps of a candidate: a slimmed shape or a sharing plan that keeps a given
fraction of the parameters, and the stage keys that make it.

Slimming is described by how the removal is split: `depth` is the share of
the removed parameters taken as whole layers (0: only MLP width, 1: only
layers), `attention` optionally removes one KV group or one query head per
group first. The width then takes what is left, rounded to kernel-friendly
multiples, so the shape is the widest of that split within the target.
"""

from __future__ import annotations

import math
from typing import Any

from llmopt.slim.candidates import attention_options
from llmopt.slim.shape import Shape

ATTENTION = ("keep", "kv_group", "head")
"""keep the attention whole; remove one KV group; remove one query head per group."""


def round_to(ffn: int) -> int:
    """MLP widths are multiples of this: 64 (kernel-friendly), smaller for tiny widths so
    that a cut keeps at least 8 steps to choose from."""
    step = 64
    while step > 1 and ffn // step < 8:
        step //= 2
    return step


def attention_choices(hf_config, original: Shape) -> tuple[str, ...]:
    """The attention cuts this model's family and shape allow."""
    options = attention_options(hf_config, original)
    out = ["keep"]
    if (original.kv_groups - 1, original.heads_per_group) in options:
        out.append("kv_group")
    if (original.kv_groups, original.heads_per_group - 1) in options:
        out.append("head")
    return tuple(out)


def _attention(original: Shape, attention: str) -> tuple[int, int]:
    if attention == "kv_group":
        return original.kv_groups - 1, original.heads_per_group
    if attention == "head":
        return original.kv_groups, original.heads_per_group - 1
    return original.kv_groups, original.heads_per_group


def slim_shape(counter, keep: float, depth: float, attention: str, step: int) -> Shape | None:
    """The shape with at most `keep` of the parameters for this split (None: none fits,
    or the split removes nothing).

    Args:
        counter: the input's `ParamCounter`.
        keep: fraction of the input's parameters kept.
        depth: share of the removal taken as whole layers, in [0, 1].
        attention: one of ATTENTION.
        step: MLP widths are multiples of this.
    """
    original = counter.original
    target = keep * counter.total
    groups, per_group = _attention(original, attention)
    full = Shape(original.layers, original.ffn, groups, per_group)
    per_layer = counter.count(full) - counter.count(
        Shape(original.layers - 1, original.ffn, groups, per_group)
    )
    removal = max(0.0, counter.count(full) - target)
    cut = removal * depth / per_layer
    # Layers only (depth 1) must reach the target by layers alone: round up there.
    layers = original.layers - min(original.layers - 1, math.ceil(cut) if depth >= 1 else int(cut))
    ffn = counter.widest_ffn(layers, groups, per_group, target)
    if ffn < original.ffn:
        ffn = ffn // step * step
    if ffn <= 0:
        return None
    shape = Shape(layers, ffn, groups, per_group)
    if shape == original or counter.count(shape) > target:
        return None
    return shape


def slim_keys(original: Shape, shape: Shape, step: int) -> dict[str, Any]:
    """The slim stage's keys that cut `original` down to `shape`."""
    keys: dict[str, Any] = {"stage": "slim"}
    if shape.layers < original.layers:
        keys["layers"] = original.layers - shape.layers
    if shape.ffn < original.ffn:
        # Rounded for the reader; the stage rounds the kept width to `round_to` again.
        keys["ffn"] = round(1.0 - shape.ffn / original.ffn, 6)
        keys["round_to"] = step
    if shape.kv_groups < original.kv_groups:
        keys["kv_groups"] = original.kv_groups - shape.kv_groups
    elif shape.heads_per_group < original.heads_per_group:
        removed = original.heads_per_group - shape.heads_per_group
        keys["heads"] = round(removed / original.heads_per_group, 6)
    return keys


def shared_layers(counter, keep: float) -> int | None:
    """The most unique blocks (fewer than the layers) whose model keeps at most `keep`
    of the parameters; None where even one block is too many."""
    original = counter.original
    target = keep * counter.total
    for k in range(original.layers - 1, 0, -1):
        if counter.count(Shape(k, original.ffn, original.kv_groups, original.heads_per_group)) <= (
            target
        ):
            return k
    return None


def share_shape(original: Shape, unique_layers: int) -> Shape:
    """The shape whose parameters a model with `unique_layers` shared blocks stores."""
    return Shape(unique_layers, original.ffn, original.kv_groups, original.heads_per_group)
