"""Solving a candidate's one free amount so that its predicted cost lands just under the aim.

A candidate's fixed parts (an N:M pattern, quantization) cost what they cost;
its free amount fills the gap: the fraction of parameters a structural step
keeps (the largest that fits), or the unstructured sparsity (the smallest
that fits). `plan(keep, sparsity)` builds the candidate's `SizePlan` and
structural stage keys (None where nothing that small can be built);
`cost(size)` predicts its cost as a fraction of the input's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from llmopt.auto.sizing import SizePlan

MAX_SPARSITY = 0.8
MIN_SPARSITY = 0.05

Plan = Callable[[float, float], tuple[SizePlan, dict[str, Any] | None] | None]
Cost = Callable[[SizePlan], float]
Solved = tuple[SizePlan, dict[str, Any] | None, float]


def solve(
    plan: Plan,
    cost: Cost,
    aim: float,
    structural: bool,
    pattern: str | None,
    split: float | None,
    fixed: float,
) -> Solved | None:
    """(size, structure keys, sparsity) of the candidate nearest under `aim`, or None.

    Args:
        plan, cost: see the module docstring.
        aim: the cost to land under.
        structural: the candidate has a structural step (its keep is free).
        pattern: the pruning pattern (None: no pruning).
        split: with both a structural step and unstructured pruning, the share of the
            way from no compression to the aim that the structural step takes.
        fixed: the sparsity an N:M pattern implies (0 without one).
    """
    if not structural:
        if pattern == "unstructured":
            return with_sparsity(plan, cost, 1.0, aim)
        made = plan(1.0, fixed)
        if made is None or (fixed == 0 and made[0].bits is None):
            return None  # nothing would be compressed
        return (made[0], made[1], fixed) if cost(made[0]) <= aim else None
    if pattern != "unstructured":
        keep = largest_keep(plan, cost, fixed, aim)
        if keep is None:
            return None
        size, keys = plan(keep, fixed)
        return size, keys, fixed
    whole = plan(1.0, 0.0)
    start = cost(whole[0]) if whole is not None else 1.0
    goal = start - split * (start - aim)
    keep = largest_keep(plan, cost, 0.0, goal)
    return None if keep is None else with_sparsity(plan, cost, keep, aim)


def largest_keep(plan: Plan, cost: Cost, sparsity: float, aim: float) -> float | None:
    """The largest fraction of parameters kept whose candidate costs at most `aim`."""

    def too_big(keep: float) -> bool:
        # Only small fractions cannot be built at all (no shape or plan that small),
        # so "built and over the aim" turns from False to True once as keep grows.
        made = plan(keep, sparsity)
        return made is not None and cost(made[0]) > aim

    low, high = 0.005, 0.9999
    if not too_big(high):
        low = high
    for _ in range(40 if low < high else 0):
        mid = (low + high) / 2
        low, high = (low, mid) if too_big(mid) else (mid, high)
    made = plan(low, sparsity)
    return low if made is not None and cost(made[0]) <= aim else None


def with_sparsity(plan: Plan, cost: Cost, keep: float, aim: float) -> Solved | None:
    """The structure at `keep` pruned just enough (4 decimals, rounded up) to cost `aim`."""
    made = plan(keep, 0.0)
    if made is None:
        return None
    size, keys = made

    def pruned(sparsity: float) -> float:
        return cost(replace(size, sparsity=sparsity))

    if pruned(MAX_SPARSITY) > aim:
        return None
    low, high = 0.0, MAX_SPARSITY
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (low, mid) if pruned(mid) <= aim else (mid, high)
    sparsity = min(MAX_SPARSITY, -(-high * 10_000 // 1) / 10_000)
    if sparsity < MIN_SPARSITY:
        return None  # the structure alone meets the budget: that is another candidate
    return replace(size, sparsity=sparsity), keys, sparsity
