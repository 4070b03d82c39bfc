"""SparseGPT (Frantar & Alistarh, 2023): prune with optimal-brain-surgeon weight updates.

For a linear layer with inputs X, the layer-wise error ||WX - W'X||^2 has the
Hessian H = 2 X X^T / n. Walking the columns left to right, each pruned
weight's error is spread over the not-yet-visited columns of its row in the
direction that H^-1 says costs least. With U the upper Cholesky factor of
H^-1, the update of column i is err_i * U[i, i:], where err_i = (w_i - q_i) / U[i, i].

Choices worth knowing:
- masks are picked 128 columns at a time (scores w^2 / U_ii^2), so later
  columns are judged after earlier errors have moved into them; N:M groups are
  picked as the walk reaches them;
- inside a 128-column block the updates are rank-1 and cheap; the block's
  accumulated error reaches the remaining columns in one matrix product;
- linears that read the same input (q/k/v, gate/up) share one Hessian and one
  walk: their rows are stacked, while each keeps its own mask budget;
- dead inputs (never non-zero: zero diagonal) get H_ii = 1 and weight 0;
- dampening (default 1% of the mean diagonal) is raised tenfold on a failed
  Cholesky, a few times, before giving up with a message that names --damp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from llmopt.calibrate import BlockStep, watch_inputs
from llmopt.calibrate.hessian import inverse_cholesky, one_thread
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.prune.base import Calibration, PrunePlan
from llmopt.prune.masks import layer_mask, nm_mask, row_mask
from llmopt.prune.wanda import feed_until_last, targeted_groups
from llmopt.sparsity import Pattern

if TYPE_CHECKING:
    from llmopt.prune.config import PruneConfig


def _segment_mask(
    scores: torch.Tensor, segments: list[int], sparsity: float, scope: str
) -> torch.Tensor:
    # Each stacked layer (q, k, v, ...) keeps its own budget of pruned weights.
    choose = row_mask if scope == "row" else layer_mask
    return torch.cat([choose(part, sparsity) for part in scores.split(segments)])


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    segments: list[int] | None = None,
    scope: str = "layer",
    blocksize: int = 128,
    damp: float = 0.01,
    where: str = "",
) -> torch.Tensor:
    """Prune an (out, in) weight with OBS updates; returns the new weight (float32).

    Args:
        weight: (out, in) weight, or several stacked along rows (see `segments`).
        hessian: (in, in) 2 X^T X / n of the inputs; not modified.
        sparsity: fraction pruned in every column block (unstructured).
        pattern: unstructured or N:M.
        segments: row counts of the stacked layers (default: one layer).
        scope: 'layer' compares scores over all rows of a column block, 'row' within a row.
        blocksize: columns whose masks are chosen together.
        damp: dampening as a fraction of the mean Hessian diagonal.
        where: the layer's name, for error messages.

    Raises:
        BadInput: the Hessian cannot be made positive definite.
    """
    with one_thread():
        return _sparsegpt(
            weight, hessian, sparsity, pattern, segments, scope, blocksize, damp, where
        )


def _sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    segments: list[int] | None,
    scope: str,
    blocksize: int,
    damp: float,
    where: str,
) -> torch.Tensor:
    w = weight.detach().float().clone()
    h = hessian.clone()
    rows, cols = w.shape
    segments = segments or [rows]
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    w[:, dead] = 0.0
    u = inverse_cholesky(h, damp, where)
    del h
    if pattern.structured:  # N:M groups must not straddle two column blocks
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        _prune_column_block(w, u, start, end, sparsity, pattern, segments, scope)
    return w


def _prune_column_block(
    w: torch.Tensor,
    u: torch.Tensor,
    start: int,
    end: int,
    sparsity: float,
    pattern: Pattern,
    segments: list[int],
    scope: str,
) -> None:
    # Work on the transpose: column i of the block is then one contiguous row.
    block = w[:, start:end].t().contiguous()
    u_block = u[start:end, start:end]
    diag = u_block.diagonal()
    inv_diag = 1.0 / diag
    errors = torch.empty_like(block)
    # err = (w - q) / U_ii, q being w with its pruned entries zeroed: w times
    # `scale` = pruned / U_ii, one op per column (the walk is Python-bound).
    scale = torch.empty_like(block)
    if pattern.structured:
        pruned = torch.zeros_like(block, dtype=torch.bool)
    else:
        scores = block.square() / diag.square().unsqueeze(1)
        pruned = _segment_mask(scores.t(), segments, sparsity, scope).t().contiguous()
        torch.mul(pruned, inv_diag.unsqueeze(1), out=scale)
    for i in range(end - start):
        if pattern.structured and i % pattern.m == 0:
            group = slice(i, i + pattern.m)
            scores = block[group].square() / diag[group].square().unsqueeze(1)
            pruned[group] = nm_mask(scores.t(), pattern).t()
            torch.mul(pruned[group], inv_diag[group].unsqueeze(1), out=scale[group])
        err = errors[i]
        torch.mul(block[i], scale[i], out=err)
        block[i + 1 :].addcmul_(u_block[i, i + 1 :, None], err[None], value=-1.0)
    block.masked_fill_(pruned, 0.0)
    w[:, start:end] = block.t()
    w[:, end:].sub_(errors.t() @ u[start:end, end:])


class SparseGPTPruner:
    """OBS-based pruning with weight updates; scopes layer (default) and row."""

    needs_calibration = True
    scopes = ("layer", "row")

    def __init__(self, blocksize: int = 128, damp: float = 0.01):
        self.blocksize = blocksize
        self.damp = damp

    @classmethod
    def from_config(cls, config: PruneConfig) -> SparseGPTPruner:
        """Build from a `PruneConfig` (uses its blocksize and damp)."""
        return cls(blocksize=config.blocksize, damp=config.damp)

    def prune(self, model: nn.Module, plan: PrunePlan, calib: Calibration | None) -> None:
        """Prune and update every planned linear in place, block by block."""
        assert calib is not None
        adapter = ArchAdapter(model)

        def handle(step: BlockStep) -> None:
            targets = plan.targets.get(step.index, {})
            groups = targeted_groups(adapter, step, targets)
            if not groups:
                step.weights_changed = False
                return
            with watch_inputs(groups, hessian=True) as stats:
                feed_until_last(step, groups)
            for group, stat in zip(groups, stats, strict=True):
                chosen = {n: m for n, m in group.items() if n in targets}
                self._prune_group(step.index, chosen, stat.hessian(), plan)
                stat.xtx = None  # free the Hessian before the next group's walk

        calib.run(model, handle, "sparsegpt")

    def _prune_group(
        self, index: int, group: dict[str, nn.Module], hessian: torch.Tensor, plan: PrunePlan
    ) -> None:
        weights = [weight_out_in(m) for m in group.values()]
        stacked = torch.cat([w.float() for w in weights])
        new = sparsegpt_prune(
            stacked,
            hessian,
            plan.block_sparsity[index],
            plan.pattern,
            segments=[w.shape[0] for w in weights],
            scope=plan.scope,
            blocksize=self.blocksize,
            damp=self.damp,
            where=f"block {index} {', '.join(group)}",
        )
        for w, part in zip(weights, new.split([w.shape[0] for w in weights]), strict=True):
            w.copy_(part)
