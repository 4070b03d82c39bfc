"""OWL (Yin et al., 2024): outlier-weighted layer-wise sparsity.

Blocks whose Wanda scores |W_ij| * ||X_j|| hold more outliers (scores above
`m` times the block's mean score) matter more and are pruned less. The outlier
ratios D_l are rescaled to span [0, 2 * lambda], centred, and turned into
per-block sparsities s_l = s - (D_l - mean D), so the average over the
measured blocks still equals the target s. Ratios come from one pass of the
sequential engine over the unpruned model.
"""

from __future__ import annotations

import torch
from torch import nn

from llmopt.calibrate import BlockStep, watch_inputs
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.prune.base import Calibration
from llmopt.prune.wanda import targeted_groups, wanda_scores


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Fraction of all scores above m times their mean."""
    flat = torch.cat([s.flatten() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float | None], target: float, lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios (None: a block with nothing to prune).

    Blocks with a ratio get target - (D_l - mean D) with D rescaled to [0, 2 lam];
    the others get the target. The result is clamped to [0, 0.99].
    """
    measured = [r for r in ratios if r is not None]
    if len(measured) < 2 or max(measured) == min(measured):
        return [target] * len(ratios)
    low, high = min(measured), max(measured)
    scaled = [(r - low) / (high - low) * 2 * lam for r in measured]
    mean = sum(scaled) / len(scaled)
    it = iter(scaled)
    out = []
    for r in ratios:
        s = target if r is None else target - (next(it) - mean)
        out.append(min(max(s, 0.0), 0.99))
    return out


def measure_outlier_ratios(
    model: nn.Module, targets: dict[int, dict[str, nn.Module]], calib: Calibration, m: float
) -> list[float | None]:
    """The outlier ratio of every block's planned linears (None where it has none)."""
    adapter = ArchAdapter(model)
    ratios: list[float | None] = [None] * adapter.num_layers

    def handle(step: BlockStep) -> None:
        step.weights_changed = False  # measuring only: the full feed's outputs are reused
        block_targets = targets.get(step.index, {})
        groups = targeted_groups(adapter, step, block_targets)
        if not groups:
            return
        with watch_inputs(groups) as stats:
            step.feed()
        scores = [
            wanda_scores(weight_out_in(module), stat.norms())
            for group, stat in zip(groups, stats, strict=True)
            for name, module in group.items()
            if name in block_targets
        ]
        ratios[step.index] = outlier_ratio(scores, m)

    calib.run(model, handle, "owl")
    return ratios
