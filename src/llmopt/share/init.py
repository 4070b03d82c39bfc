"""Initialise a shared block from the trained layers that will run it.

Every initialisation is a weighting of the group's layers: `average` gives
each layer 1/g, `first` puts all weight on the first layer of the group, and
`stepwise` on one layer taken at even intervals over the whole depth (the
"stepwise" initialisation of Relaxed Recursive Transformers: block j of K is
initialised from layer round(j (N-1)/(K-1)), so a looped stack starts from
layers spread over the original depth rather than from its bottom). A block
run by a single layer always keeps that layer's own weights. Norms and biases
are weighted like the matrices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from llmopt.share.plan import SharePlan

Weighting = dict[int, float]
"""layer -> weight of that layer's parameters in the block's initial value."""


def _average(plan: SharePlan) -> list[Weighting]:
    return [{layer: 1.0 / len(g) for layer in g} for g in plan.groups()]


def _first(plan: SharePlan) -> list[Weighting]:
    return [{g[0]: 1.0} for g in plan.groups()]


def _stepwise(plan: SharePlan) -> list[Weighting]:
    n, k = plan.num_layers, plan.num_blocks
    out: list[Weighting] = []
    for block, group in enumerate(plan.groups()):
        if len(group) == 1:
            out.append({group[0]: 1.0})
            continue
        # K == 1 has one "evenly spaced" point: the middle of the stack.
        source = round(block * (n - 1) / (k - 1)) if k > 1 else (n - 1) // 2
        out.append({source: 1.0})
    return out


INITS: dict[str, Callable[[SharePlan], list[Weighting]]] = {
    "average": _average,
    "first": _first,
    "stepwise": _stepwise,
}


def weighted_value(tensors: dict[int, torch.Tensor], weighting: Weighting) -> torch.Tensor:
    """sum(w * tensor) over the weighting, accumulated in float32, in the tensors' dtype."""
    if len(weighting) == 1:
        (layer,) = weighting
        return tensors[layer].detach().clone()
    first = tensors[next(iter(weighting))]
    acc = torch.zeros(first.shape, dtype=torch.float32, device=first.device)
    for layer, w in weighting.items():
        acc += w * tensors[layer].detach().float()
    return acc.to(first.dtype)
