"""Successive halving: the rounds of a search, and who goes on to the next one.

Round 0 screens every candidate right after its calibration-only stages (no
training) by the proxy. Each later round keeps 1/eta of the previous one's
feasible candidates and gives them eta times the recovery and proxy tokens of
the round before, until the finalists, which get the full recovery. The ranking
can flip after recovery (ModelOpt and Minitron both report it), so promotion
in every round uses the measurement after that round's recovery, and the
final choice is made on held-out perplexity after the full recovery.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Round:
    """One round of the search."""

    index: int
    size: int
    """How many candidates enter it."""
    recovery_tokens: int
    proxy_tokens: int
    final: bool


def schedule(
    trials: int,
    eta: int,
    finalists: int,
    recovery_tokens: int,
    proxy_tokens: int,
    max_proxy_tokens: int,
) -> list[Round]:
    """The rounds: screening, then halving rounds, then the finalists' full recovery.

    Without recovery (recovery_tokens 0) the screening round is also the final one.
    """
    if recovery_tokens <= 0:
        return [Round(0, trials, 0, proxy_tokens, True)]
    sizes = [trials]
    while sizes[-1] > finalists:
        sizes.append(max(finalists, math.ceil(sizes[-1] / eta)))
    if len(sizes) == 1:
        sizes.append(sizes[0])  # fewer candidates than finalists: all of them recover
    last = len(sizes) - 1
    return [
        Round(
            index,
            size,
            0 if index == 0 else round(recovery_tokens / eta ** (last - index)),
            min(proxy_tokens * eta**index, max_proxy_tokens),
            index == last,
        )
        for index, size in enumerate(sizes)
    ]


def pareto_ranks(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting: 0 for the Pareto front (smaller is better on both), 1 for the
    front of the rest, and so on."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    level = 0
    while left:
        front = {
            i
            for i in left
            if not any(
                points[j][0] <= points[i][0]
                and points[j][1] <= points[i][1]
                and points[j] != points[i]
                for j in left
            )
        }
        for i in front:
            ranks[i] = level
        left -= front
        level += 1
    return ranks


def promote(outcomes: list[dict[str, Any]], count: int, pareto: bool = False) -> list[str]:
    """The ids of the `count` best feasible outcomes of a round, best first.

    Best: the lowest proxy (KL to the input); with `pareto`, the lowest Pareto rank of
    (proxy, cost) first, so that the survivors span the size/quality front. Ties keep
    the candidates' id order, so a resumed search promotes the same ones.
    """
    feasible = sorted((o for o in outcomes if o["feasible"]), key=lambda o: o["candidate"])
    if pareto:
        ranks = pareto_ranks([(o["kl"], o["cost"]) for o in feasible])
        order = sorted(range(len(feasible)), key=lambda i: (ranks[i], feasible[i]["kl"]))
    else:
        order = sorted(range(len(feasible)), key=lambda i: feasible[i]["kl"])
    return [feasible[i]["candidate"] for i in order[:count]]
