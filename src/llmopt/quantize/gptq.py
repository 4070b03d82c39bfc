"""GPTQ (Frantar et al., 2023): quantize column by column with OBS error feedback.

For a linear layer with inputs X, the layer-wise error ||WX - QX||^2 has the
Hessian H = 2 X X^T / n. Walking the input columns in order, each column is
rounded to its grid and its rounding error is spread over the not-yet-visited
columns in the direction H^-1 says costs least. With U the upper Cholesky
factor of H^-1, column i's update is err_i * U[i, i:], err_i = (w_i - q_i) / U_ii.
This is the walk of SparseGPT (llmopt.prune.sparsegpt) with "round to the
grid" in place of (or, for joint compression, after) "set to zero".

Choices worth knowing:
- linears that read the same input (q/k/v, gate/up) share one Hessian and one
  walk: their rows are stacked; scales are per row, so stacking changes nothing
  but the cost (one Cholesky, one column loop instead of three);
- group scales are computed when the walk reaches the group, from the weights
  as updated so far (the paper's choice); with activation order, columns are
  visited by decreasing H_ii but the groups stay contiguous in the original
  order and their scales are computed before the walk ("static groups"), so
  the stored layout needs no permutation index;
- weights that are exactly zero when the walk starts (a pruned model) are
  kept at zero: their "rounding" is to 0, so zeros stay zero and the error of
  the others is compensated around them; joint pruning adds the SparseGPT
  masks (w^2 / U_ii^2, per 128-column block or per N:M group as the walk
  reaches it) to that set;
- dead inputs (zero diagonal) get H_ii = 1 and weight 0, and dampening
  (default 1% of the mean diagonal) is raised tenfold on a failed Cholesky.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llmopt.calibrate.hessian import inverse_cholesky, one_thread
from llmopt.quantize.grid import GridSpec, grid_params


@dataclass(frozen=True)
class JointSparsity:
    """Pruning done in the same walk: a sparsity (unstructured) or N zeros in every M."""

    sparsity: float = 0.0
    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def active(self) -> bool:
        return self.structured or self.sparsity > 0


@dataclass
class GPTQResult:
    """A quantized weight (float32, on its grid) with its scales and zero points."""

    weight: torch.Tensor
    scale: torch.Tensor
    """(out, groups) float32, float16-representable."""
    zero: torch.Tensor
    """(out, groups) float32, integer-valued."""


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k lowest entries of a 2-D tensor (exact count, ties by position)."""
    flat = scores.flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.argsort(flat, stable=True)[:k]] = True
    return mask.view_as(scores)


class _Walk:
    """State of one GPTQ walk over a (rows, cols) weight; see `gptq_quantize`."""

    def __init__(self, w, u, spec, joint, segments, static_scale, static_zero, cols_order):
        self.w, self.u, self.spec, self.joint = w, u, spec, joint
        self.segments = segments
        rows, cols = w.shape
        self.group = spec.width(cols)
        n_groups = spec.groups(cols)
        self.scale = static_scale if static_scale is not None else w.new_zeros(rows, n_groups)
        self.zero = static_zero if static_zero is not None else w.new_zeros(rows, n_groups)
        self.static = static_scale is not None
        self.cols_order = cols_order  # original column index of each walked column
        self.pruned = w == 0  # zeros stay zeros; joint masks are added as blocks start

    def block(self, start: int, end: int) -> None:
        # Work on the transpose: column i of the block is then one contiguous row.
        w, u, spec = self.w, self.u, self.spec
        blk = w[:, start:end].t().contiguous()
        pruned = self.pruned[:, start:end].t().contiguous()
        u_blk = u[start:end, start:end]
        diag = u_blk.diagonal()
        inv_diag = 1.0 / diag
        if self.joint.active and not self.joint.structured:
            pruned |= self._unstructured_mask(blk, diag)
        errors = torch.empty_like(blk)
        tmp = torch.empty_like(blk[0])
        for i in range(end - start):
            col = start + i
            if self.joint.structured and i % self.joint.m == 0:
                pruned[i : i + self.joint.m] |= self._nm_mask(blk[i : i + self.joint.m], diag, i)
            if not self.static and col % self.group == 0:
                self._group_params(blk[i : i + self.group], pruned[i : i + self.group], col)
            g = int(self.cols_order[col]) // self.group
            s, z = self.scale[:, g], self.zero[:, g]
            # q = (clamp(round(w / s) + z) - z) * s, zero where pruned
            torch.div(blk[i], s, out=tmp)
            tmp.round_().add_(z).clamp_(0, spec.maxq).sub_(z).mul_(s)
            tmp.masked_fill_(pruned[i], 0.0)
            err = errors[i]
            torch.sub(blk[i], tmp, out=err).mul_(inv_diag[i])
            blk[i].copy_(tmp)
            blk[i + 1 :].addcmul_(u_blk[i, i + 1 :, None], err[None], value=-1.0)
        w[:, start:end] = blk.t()
        self.pruned[:, start:end] = pruned.t()
        w[:, end:].sub_(errors.t() @ u[start:end, end:])

    def _group_params(self, cols: torch.Tensor, pruned: torch.Tensor, col: int) -> None:
        # The group's range is taken from what will be stored: pruned entries count as 0.
        values = cols.masked_fill(pruned, 0.0).t()
        scale, zero = grid_params(values, self.spec)
        g = col // self.group
        self.scale[:, g], self.zero[:, g] = scale, zero

    def _unstructured_mask(self, blk: torch.Tensor, diag: torch.Tensor) -> torch.Tensor:
        scores = blk.square() / diag.square().unsqueeze(1)
        parts = []
        # Each stacked layer (q, k, v, ...) keeps its own budget of pruned weights.
        for part in scores.split(self.segments, dim=1):
            parts.append(_lowest(part, int(part.numel() * self.joint.sparsity)))
        return torch.cat(parts, dim=1)

    def _nm_mask(self, cols: torch.Tensor, diag: torch.Tensor, i: int) -> torch.Tensor:
        # cols: (m, rows); prune the n lowest w^2 / U_ii^2 of every row's m inputs.
        scores = cols.square() / diag[i : i + cols.shape[0]].square().unsqueeze(1)
        idx = torch.topk(scores, self.joint.n, dim=0, largest=False).indices
        mask = torch.zeros_like(cols, dtype=torch.bool)
        mask.scatter_(0, idx, True)
        return mask


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: GridSpec,
    joint: JointSparsity | None = None,
    segments: list[int] | None = None,
    act_order: bool = False,
    blocksize: int = 128,
    damp: float = 0.01,
    where: str = "",
) -> GPTQResult:
    """Quantize an (out, in) weight (or several stacked along rows) with GPTQ.

    Args:
        weight: (out, in) weight; not modified.
        hessian: (in, in) 2 X^T X / n of the inputs; not modified.
        spec: bits, group size (must divide in) and symmetry.
        joint: pruning to do in the same walk (None: none beyond existing zeros).
        segments: row counts of the stacked layers, for per-layer pruning budgets.
        act_order: visit columns by decreasing Hessian diagonal (static groups).
        blocksize: columns updated together (rounded to whole groups and N:M groups).
        damp: dampening as a fraction of the mean Hessian diagonal.
        where: the layer's name, for error messages.

    Returns:
        The quantized float32 weight with its scales and zero points.

    Raises:
        BadInput: the Hessian cannot be made positive definite.
    """
    joint = joint or JointSparsity()
    with one_thread():
        return _gptq(weight, hessian, spec, joint, segments, act_order, blocksize, damp, where)


def _gptq(weight, hessian, spec, joint, segments, act_order, blocksize, damp, where):
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    rows, cols = w.shape
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0
    w[:, dead] = 0.0
    group = spec.width(cols)
    static_scale = static_zero = None
    order = torch.arange(cols, device=w.device)
    if act_order or spec.group_size is None:
        # Scales before the walk: per row (one group) or static groups (act order).
        pruned_now = w == 0
        values = w.masked_fill(pruned_now, 0.0)
        n_groups = spec.groups(cols)
        flat = values.reshape(rows * n_groups, group)
        s, z = grid_params(flat, spec)
        static_scale, static_zero = s.view(rows, n_groups), z.view(rows, n_groups)
    if act_order:
        order = torch.argsort(h.diagonal(), descending=True, stable=True)
        w, h = w[:, order], h[order][:, order]
    u = inverse_cholesky(h, damp, where)
    del h
    step = math.lcm(group if static_scale is None else 1, joint.m or 1)
    blocksize = max(step, blocksize - blocksize % step)
    walk = _Walk(w, u, spec, joint, segments or [rows], static_scale, static_zero, order)
    for start in range(0, cols, blocksize):
        walk.block(start, min(start + blocksize, cols))
    if act_order:
        w = w[:, torch.argsort(order)]
    return GPTQResult(w, walk.scale, walk.zero)
