"""Sharing plans: which of the N decoder layers runs which of the K unique blocks.

A plan is a map `block_of[layer] -> block id`. Block ids are numbered in the
order of their first use (layer 0 always runs block 0), so two maps that
group the layers the same way are the same plan, and "the first layer of a
group" is simply the first layer whose entry is that id.

Strategies (`PLANS`):

- `cycle`: layer i runs block i mod K; the whole stack is the K-block stack
  looped N/K times (ALBERT, Relaxed Recursive Transformers).
- `sequence`: consecutive runs of about N/K layers share one block.
- `adjacent`: neighbouring pairs share (MobileLLM's immediate block-wise
  sharing); with K > N/2 only N - K pairs share, spread evenly over the
  depth, and the other layers stay unique. A pair is the most it groups, so
  K must be at least ceil(N/2).

`keep_ends` gives the first and the last layer blocks of their own and plans
the K - 2 remaining blocks over the N - 2 inner layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmopt.errors import BadInput, did_you_mean


@dataclass(frozen=True)
class SharePlan:
    """Which block each layer runs. Block ids are 0..K-1 in order of first use."""

    block_of: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        return len(self.block_of)

    @property
    def num_blocks(self) -> int:
        return max(self.block_of) + 1

    def groups(self) -> list[list[int]]:
        """The layers of each block, in block order (each list ascending)."""
        out: list[list[int]] = [[] for _ in range(self.num_blocks)]
        for layer, block in enumerate(self.block_of):
            out[block].append(layer)
        return out

    def owner(self, block: int) -> int:
        """The first layer that runs `block`: its parameters become the shared ones."""
        return self.block_of.index(block)

    def as_text(self) -> str:
        """The map as `--map` takes it, e.g. '0,1,0,1'."""
        return ",".join(str(b) for b in self.block_of)


def _cycle(n: int, k: int) -> list[int]:
    return [i % k for i in range(n)]


def _sequence(n: int, k: int) -> list[int]:
    # floor(i*K/N) makes runs whose lengths differ by at most one when K does not divide N.
    return [i * k // n for i in range(n)]


def _adjacent(n: int, k: int) -> list[int]:
    if 2 * k < n:
        raise BadInput(
            f"--unique-layers {k}: the adjacent plan shares only neighbouring pairs, so it needs "
            f"at least {(n + 1) // 2} blocks for {n} layers (use cycle or sequence for fewer)"
        )
    pairs = n - k
    out: list[int] = []
    for unit in range(k):
        # Spread the pairs evenly over the K units (Bresenham-style).
        size = 2 if (unit + 1) * pairs // k > unit * pairs // k else 1
        out.extend([unit] * size)
    return out


PLANS: dict[str, Callable[[int, int], list[int]]] = {
    "cycle": _cycle,
    "sequence": _sequence,
    "adjacent": _adjacent,
}


def _renumber(block_of: list[int]) -> tuple[int, ...]:
    """Relabel block ids in order of first use."""
    first_use: dict[int, int] = {}
    for block in block_of:
        first_use.setdefault(block, len(first_use))
    return tuple(first_use[b] for b in block_of)


def make_plan(
    num_layers: int, unique_layers: int, strategy: str = "cycle", keep_ends: bool = False
) -> SharePlan:
    """Plan K unique blocks over N layers with a named strategy.

    Raises:
        BadInput: unknown strategy, K outside [1, N], or K too small for the
            strategy or for `keep_ends` (which needs K >= 3 unless K == N).
    """
    if strategy not in PLANS:
        raise BadInput(
            f"--strategy {strategy!r}: unknown{did_you_mean(strategy, PLANS)}; "
            f"known: {', '.join(PLANS)}"
        )
    n, k = num_layers, unique_layers
    if not 1 <= k <= n:
        raise BadInput(f"--unique-layers {k}: must be between 1 and the model's {n} layers")
    if not keep_ends or k == n:
        return SharePlan(_renumber(PLANS[strategy](n, k)))
    if k < 3:
        raise BadInput(f"--unique-layers {k}: --keep-ends needs at least 3 (two ends + one shared)")
    inner = PLANS[strategy](n - 2, k - 2)
    return SharePlan(_renumber([-1, *inner, k - 2]))


def parse_map(text: str, num_layers: int, unique_layers: int | None = None) -> SharePlan:
    """Turn `--map 0,0,1,1,...` into a plan.

    Ids may be any non-negative integers (they are renumbered in order of
    first use); when `unique_layers` is given, ids must lie in [0, K) and all
    K blocks must be used.

    Raises:
        BadInput: not a comma-separated list of integers, wrong length,
            unknown block ids, or blocks that no layer uses.
    """
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",")]
    except ValueError:
        raise BadInput(
            f"--map {text!r}: expected comma-separated block ids, e.g. 0,0,1,1"
        ) from None
    if len(ids) != num_layers:
        raise BadInput(f"--map {text!r}: has {len(ids)} entries, the model has {num_layers} layers")
    if min(ids) < 0:
        raise BadInput(f"--map {text!r}: block id {min(ids)} is negative")
    if unique_layers is not None:
        unknown = sorted({i for i in ids if i >= unique_layers})
        if unknown:
            raise BadInput(
                f"--map: unknown block id {unknown[0]} (--unique-layers {unique_layers} "
                f"allows 0..{unique_layers - 1})"
            )
        unused = sorted(set(range(unique_layers)) - set(ids))
        if unused:
            raise BadInput(f"--map: block {unused[0]} is used by no layer")
    return SharePlan(_renumber(ids))
