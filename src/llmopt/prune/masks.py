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

import re
from dataclasses import dataclass

import torch

from llmopt.errors import BadInput

SCOPES: tuple[str, ...] = ("row", "layer", "global")


@dataclass(frozen=True)
class Pattern:
    """Unstructured (n = m = 0) or N:M (n zeros in every m consecutive inputs)."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        """The sparsity an N:M pattern implies; None when unstructured."""
        return self.n / self.m if self.m else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def parse_pattern(text: str) -> Pattern:
    """'unstructured' or 'N:M' with 0 < N < M.

    Raises:
        BadInput: anything else, naming the value.
    """
    if text == "unstructured":
        return Pattern()
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        raise BadInput(f"--pattern {text!r}: expected 'unstructured' or N:M such as 2:4")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise BadInput(f"--pattern {text!r}: N:M needs 0 < N < M")
    return Pattern(n, m)


def check_divisible(pattern: Pattern, name: str, in_features: int) -> None:
    """N:M groups must tile every row exactly.

    Raises:
        BadInput: M does not divide the layer's input width.
    """
    if pattern.structured and in_features % pattern.m:
        raise BadInput(
            f"--pattern {pattern}: M={pattern.m} does not divide the input width "
            f"{in_features} of {name}"
        )


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
