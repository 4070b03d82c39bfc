"""The handful of shapes `--params P` chooses among, from the config alone.

A parameter budget can be met by removing layers, MLP channels, attention,
or a mix. The candidates span that range: depths evenly spaced from the
layers-only cut (keep every width, remove as many layers as needed) to no
layer cut at all; at each depth the attention is kept whole, or loses one KV
group, or one query head per group (where the family's config can express
it), and the MLP keeps the most channels (a multiple of `round_to`) that
the budget allows. Every candidate has at most P of the original parameters.
"""

from __future__ import annotations

from llmopt.models.arch import spec_for
from llmopt.slim.shape import ParamCounter, Shape, heads_expressible


def attention_options(hf_config, original: Shape) -> list[tuple[int, int]]:
    """(KV groups, query heads per group) a candidate may have: whole, one group less,
    one head per group less (the last two only where the config can express them)."""
    options = [(original.kv_groups, original.heads_per_group)]
    if heads_expressible(spec_for(hf_config.model_type)):
        if original.kv_groups >= 2:
            options.append((original.kv_groups - 1, original.heads_per_group))
        if original.heads_per_group >= 2:
            options.append((original.kv_groups, original.heads_per_group - 1))
    return options


def _fit(
    counter: ParamCounter, layers: int, attention: tuple[int, int], budget: float, round_to: int
) -> Shape | None:
    """The widest shape at this depth and attention within the budget, or None."""
    widest = counter.widest_ffn(layers, *attention, budget)
    if widest < counter.original.ffn:
        widest = widest // round_to * round_to
    if widest <= 0:
        return None
    return Shape(layers, widest, *attention)


def _depth_grid(low: int, high: int, depths: int) -> list[int]:
    steps = max(depths - 1, 1)
    return sorted({round(low + (high - low) * k / steps) for k in range(depths)})


def candidate_shapes(
    hf_config, keep: float, round_to: int, depths: int, counter: ParamCounter | None = None
) -> list[Shape]:
    """Shapes with at most `keep` of the parameters, spanning depth and width cuts.

    Args:
        hf_config: the original model's config.
        keep: fraction of the parameters to keep, in (0, 1).
        round_to: MLP widths are multiples of this (or the original width).
        depths: how many depths to try, from the layers-only cut to no layer cut.
        counter: a `ParamCounter` of `hf_config` to reuse.

    Returns:
        The candidates, by depth then attention option; empty where none fits.
    """
    counter = counter or ParamCounter(hf_config)
    original = counter.original
    budget = keep * counter.total
    options = attention_options(hf_config, original)
    fits = {
        n: [s for a in options if (s := _fit(counter, n, a, budget, round_to)) is not None]
        for n in range(1, original.layers + 1)
    }
    feasible = [n for n, shapes in fits.items() if shapes]
    if not feasible:
        return []
    # Fewer layers always fit better, so the feasible depths are 1..max(feasible).
    whole = [n for n in feasible if _whole(original, n) in fits[n]]
    low = max(whole) if whole else min(feasible)
    out: list[Shape] = []
    for n in _depth_grid(low, max(feasible), depths):
        for shape in fits.get(n, []):
            if shape not in out and shape != original:
                out.append(shape)
    return out


def _whole(original: Shape, layers: int) -> Shape:
    return Shape(layers, original.ffn, original.kv_groups, original.heads_per_group)
