"""Magnitude pruning: zero the weights of smallest absolute value.

By a target sparsity compared per output row, per layer or over all selected
layers at once (`global`), or by an absolute threshold (the classic form).
No data is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from llmopt.models.arch import weight_out_in
from llmopt.prune.base import Calibration, PrunePlan
from llmopt.prune.masks import apply_mask, choose_mask, global_masks

if TYPE_CHECKING:
    from llmopt.prune.config import PruneConfig


class MagnitudePruner:
    """|W| as the score; scopes row, layer and global."""

    needs_calibration = False
    scopes = ("layer", "row", "global")

    @classmethod
    def from_config(cls, config: PruneConfig) -> MagnitudePruner:
        """Build from a `PruneConfig` (no settings of its own)."""
        return cls()

    def prune(self, model: nn.Module, plan: PrunePlan, calib: Calibration | None = None) -> None:
        """Zero the lowest-|W| weights of every planned linear in place."""
        weights = {key: weight_out_in(m) for key, m in plan.named_targets().items()}
        if plan.threshold is not None:
            for w in weights.values():
                apply_mask(w, w.abs() < plan.threshold)
        elif plan.scope == "global" and not plan.pattern.structured:
            masks = global_masks({k: w.abs() for k, w in weights.items()}, plan.block_sparsity[0])
            for key, w in weights.items():
                apply_mask(w, masks[key])
        else:
            for (block, _), w in weights.items():
                sparsity = plan.block_sparsity[block]
                apply_mask(w, choose_mask(w.abs(), sparsity, plan.pattern, plan.scope))
