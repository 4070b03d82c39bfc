"""Wanda (Sun et al., 2023): prune by |W_ij| * ||X_j||_2, no weight update.

The score of a weight is its magnitude times the L2 norm of the input feature
it multiplies, over every calibration token; weights are compared within
their output row (the paper's choice) or the whole layer. Statistics come from
the sequential engine, so each block sees the inputs of the already pruned
blocks before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from llmopt.calibrate import BlockStep, input_groups, watch_inputs
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.prune.base import Calibration, PrunePlan
from llmopt.prune.masks import apply_mask, choose_mask

if TYPE_CHECKING:
    from llmopt.prune.config import PruneConfig


def wanda_scores(weight: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 for an (out, in) weight and per-input norms of length in."""
    return weight.abs().float() * norms.to(weight.device).unsqueeze(0)


def targeted_groups(
    adapter: ArchAdapter, step: BlockStep, targets: dict[str, nn.Module]
) -> list[dict[str, nn.Module]]:
    """The block's input groups that contain at least one planned linear."""
    groups = input_groups(adapter, step.block)
    return [g for g in groups if any(name in targets for name in g)]


def feed_until_last(step: BlockStep, groups: list[dict[str, nn.Module]]) -> None:
    """Feed the block, stopping where the last hooked group reads its input."""
    step.feed(until=next(iter(groups[-1].values())))


class WandaPruner:
    """Weights-and-activations pruning; scopes row (default) and layer."""

    needs_calibration = True
    scopes = ("row", "layer")

    @classmethod
    def from_config(cls, config: PruneConfig) -> WandaPruner:
        """Build from a `PruneConfig` (no settings of its own)."""
        return cls()

    def prune(self, model: nn.Module, plan: PrunePlan, calib: Calibration | None) -> None:
        """Prune every planned linear in place, block by block."""
        assert calib is not None
        adapter = ArchAdapter(model)

        def handle(step: BlockStep) -> None:
            targets = plan.targets.get(step.index, {})
            groups = targeted_groups(adapter, step, targets)
            if not groups:
                step.weights_changed = False
                return
            with watch_inputs(groups) as stats:
                feed_until_last(step, groups)
            sparsity = plan.block_sparsity[step.index]
            for group, stat in zip(groups, stats, strict=True):
                norms = stat.norms()
                for name, module in group.items():
                    if name in targets:
                        w = weight_out_in(module)
                        scores = wanda_scores(w, norms)
                        apply_mask(w, choose_mask(scores, sparsity, plan.pattern, plan.scope))

        calib.run(model, handle, "wanda")
