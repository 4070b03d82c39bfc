"""Which weights to zero: sparsity patterns and the scopes scores are compared in.

A *mask* here is a boolean tensor shaped like the (out, in) weight whose True
entries are pruned. Scores are "how much a weight matters" (|W| for magnitude,
|W| * ||X|| for Wanda); the lowest scores are pruned.

Counts are exact: with sparsity s, `row` prunes floor(s * in) weights in every
row, `layer` floor(s * numel) in the layer, `global` floor(s * total) over all
layers together; ties at the threshold are broken by position, so the count
never drifts with repeated values. `N:M` prunes exactly N of every M
consecutive inputs of a row (the convention of the SparseGPT and Wanda papers:
2:4 zeros two weights in every four). Which of several equal scores is pruned
follows position in `layer`/`global` scope, and torch.topk's order otherwise.
"""

from __future__ import annotations

import torch

from llmopt.sparsity import Pattern

SCOPES: tuple[str, ...] = ("row", "layer", "global")


def lowest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k lowest entries of a 1-D tensor (exact count, ties by position).

    A k-th value (linear time) instead of a sort: several times faster on the
    large layers this runs on; entries equal to it are taken first-come.
    """
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    threshold = scores.kthvalue(k).values
    mask = scores < threshold
    missing = k - int(mask.sum())
    if missing > 0:
        mask[(scores == threshold).nonzero().flatten()[:missing]] = True
    return mask


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune floor(sparsity * in) lowest-scoring weights in every row."""
    k = int(scores.shape[1] * sparsity)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
    return mask


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune floor(sparsity * numel) lowest-scoring weights of the whole layer."""
    return lowest_k(scores.flatten(), int(scores.numel() * sparsity)).view_as(scores)


def nm_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Prune the N lowest of every M consecutive inputs of each row."""
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // pattern.m, pattern.m)
    idx = torch.topk(groups, pattern.n, dim=2, largest=False).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, idx, True)
    return mask.view(rows, cols)


def choose_mask(
    scores: torch.Tensor, sparsity: float, pattern: Pattern, scope: str = "row"
) -> torch.Tensor:
    """The mask of one layer under a pattern and a per-layer scope ('row' or 'layer')."""
    if pattern.structured:
        return nm_mask(scores, pattern)
    if scope == "row":
        return row_mask(scores, sparsity)
    if scope == "layer":
        return layer_mask(scores, sparsity)
    raise ValueError(f"scope {scope!r} is not a per-layer scope")


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Prune floor(sparsity * total) lowest scores over all layers together.

    The threshold comes from one k-th value over every score; entries equal to
    it are pruned in layer order until the count is exact.
    """
    total = sum(s.numel() for s in scores.values())
    k = int(total * sparsity)
    masks = {name: torch.zeros_like(s, dtype=torch.bool) for name, s in scores.items()}
    if k == 0:
        return masks
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    threshold = flat.kthvalue(k).values
    del flat
    remaining = k
    for name, s in scores.items():
        below = s < threshold
        masks[name] = below
        remaining -= int(below.sum())
    for name, s in scores.items():
        if remaining <= 0:
            break
        ties = (s == threshold).flatten().nonzero().flatten()[:remaining]
        masks[name].view(-1)[ties] = True
        remaining -= ties.numel()
    return masks


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the masked entries of an (out, in) weight view in place."""
    weight.masked_fill_(mask, 0.0)
