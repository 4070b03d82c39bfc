"""What to keep: the layers, and in each kept layer the MLP channels, KV groups and query heads.

A `SlimPlan` is indices into the original model, so one plan serves both the
surgery (slice the tensors) and the masked evaluation of a candidate (zero
what would be removed). `plan_for` turns a target shape and importance
scores into the plan that keeps the most important parts: the least
important layers go; in every kept layer the same number of channels, KV
groups and query heads per group go, each layer choosing its own by score
(the config holds one width for all layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmopt.slim.importance import Importance
from llmopt.slim.shape import Shape


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Ascending indices of the `k` highest scores (ties: the earlier index is kept)."""
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return order[:k].sort().values


@dataclass(frozen=True)
class SlimPlan:
    """Indices kept, per kept layer, into the original model of shape `original`.

    Raises (on construction):
        ValueError: counts differ across layers, or heads do not fill whole groups.
    """

    original: Shape
    layers: tuple[int, ...]
    """Original indices of the kept layers, ascending."""
    channels: tuple[torch.Tensor, ...]
    """Per kept layer: kept MLP channels, ascending."""
    groups: tuple[torch.Tensor, ...]
    """Per kept layer: kept KV groups, ascending."""
    heads: tuple[torch.Tensor, ...]
    """Per kept layer: kept query heads, ascending, the same number from each kept group."""

    def __post_init__(self) -> None:
        n = len(self.layers)
        if not (len(self.channels) == len(self.groups) == len(self.heads) == n):
            raise ValueError("one entry per kept layer is needed")
        for name in ("channels", "groups", "heads"):
            if len({len(t) for t in getattr(self, name)}) > 1:
                raise ValueError(f"kept {name} differ across layers")
        per = self.original.heads_per_group
        for groups, heads in zip(self.groups, self.heads, strict=True):
            owners = torch.unique(heads // per)
            counts = torch.bincount(heads // per, minlength=self.original.kv_groups)
            if not torch.equal(owners, groups) or len(set(counts[groups].tolist())) > 1:
                raise ValueError("kept heads must be the same number from each kept group")

    @property
    def shape(self) -> Shape:
        """The shape of the slimmed model."""
        groups = len(self.groups[0])
        return Shape(
            layers=len(self.layers),
            ffn=len(self.channels[0]),
            kv_groups=groups,
            heads_per_group=len(self.heads[0]) // groups,
        )


def keep_heads(
    scores: torch.Tensor, original: Shape, groups: int, per_group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept groups, kept heads) of one layer: a group scores the sum of its heads.

    Args:
        scores: (heads,) head scores of the layer.
        original: the original shape (groups and heads per group).
        groups: KV groups to keep.
        per_group: query heads to keep in each kept group.
    """
    grid = scores.reshape(original.kv_groups, original.heads_per_group)
    kept_groups = top_indices(grid.sum(1), groups)
    heads = [g * original.heads_per_group + top_indices(grid[g], per_group) for g in kept_groups]
    return kept_groups, torch.cat(heads)


def _need(scores: torch.Tensor | None, axis: str) -> torch.Tensor:
    if scores is None:
        raise ValueError(f"cutting {axis} needs its importance scores")
    return scores


def plan_for(original: Shape, target: Shape, importance: Importance) -> SlimPlan:
    """The plan of `target` that keeps the most important parts (scores needed only
    for the axes that are cut)."""
    if target.layers < original.layers:
        layers = top_indices(_need(importance.layers, "layers"), target.layers).tolist()
    else:
        layers = list(range(original.layers))
    channels, groups, heads = [], [], []
    cut_heads = (target.kv_groups, target.heads_per_group) != (
        original.kv_groups,
        original.heads_per_group,
    )
    for layer in layers:
        if target.ffn < original.ffn:
            channels.append(top_indices(_need(importance.ffn, "ffn")[layer], target.ffn))
        else:
            channels.append(torch.arange(original.ffn))
        if cut_heads:
            scores = _need(importance.heads, "heads")[layer]
            g, h = keep_heads(scores, original, target.kv_groups, target.heads_per_group)
        else:
            g, h = torch.arange(original.kv_groups), torch.arange(original.heads)
        groups.append(g)
        heads.append(h)
    return SlimPlan(original, tuple(layers), tuple(channels), tuple(groups), tuple(heads))


def full_plan(original: Shape) -> SlimPlan:
    """The plan that keeps everything."""
    return plan_for(original, original, Importance())
