"""Statistics of the inputs of a block's linear layers, collected while the engine feeds it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from llmopt.models.arch import ArchAdapter, get_path, weight_out_in


def input_groups(adapter: ArchAdapter, block: nn.Module) -> list[dict[str, nn.Module]]:
    """A block's linears grouped by the tensor they read, in forward order.

    q/k/v read the same normalised input, and so do gate/up: one set of
    statistics serves the whole group.
    """
    spec = adapter.spec
    names = (spec.attn_in, spec.attn_out, spec.mlp_in, spec.mlp_out)
    return [{name: get_path(block, name) for name in group} for group in names if group]


GRAM_BLOCK = 256
"""Feature block of the symmetric X^T X update (below this, GEMMs lose efficiency)."""


def add_gram_lower_(acc: torch.Tensor, x: torch.Tensor, block: int | None = None) -> None:
    """acc += X^T X on the diagonal and lower off-diagonal feature blocks only.

    X^T X is symmetric, so the blocks above the diagonal repeat those below;
    skipping them is the BLAS syrk idea with torch's GEMM: with k blocks it
    costs k(k + 1) / 2k^2 of the full product (75% at k = 2, 62.5% at k = 4).
    Read the result through `symmetric`.
    """
    block = block or GRAM_BLOCK
    features = x.shape[1]
    k = max(1, features // block)
    edges = [features * i // k for i in range(k + 1)]
    for i in range(k):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i + 1):
            cols = slice(edges[j], edges[j + 1])
            acc[rows, cols].addmm_(x[:, rows].T, x[:, cols])


def symmetric(lower: torch.Tensor) -> torch.Tensor:
    """The full matrix from one filled by `add_gram_lower_` (its lower triangle is exact)."""
    return torch.tril(lower) + torch.tril(lower, -1).T


class InputStats:
    """Running statistics of the inputs of one linear layer (or of a group sharing them).

    Attributes:
        tokens: how many input rows were seen.
        xtx: X^T X in float32 (in_features x in_features), when `hessian` was asked;
            only its lower triangle is kept up to date (see `add_gram_lower_`):
            read it through `gram()`.
    """

    def __init__(self, features: int, device: torch.device, hessian: bool):
        self.tokens = 0
        self.xtx = torch.zeros(features, features, device=device) if hessian else None
        self._sq_sum = None if hessian else torch.zeros(features, device=device)

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs shaped (..., features)."""
        x = x.reshape(-1, x.shape[-1]).float()
        self.tokens += x.shape[0]
        if self.xtx is not None:
            # Large fp32 matmuls per batch; the diagonal also gives the norms.
            add_gram_lower_(self.xtx, x)
        else:
            self._sq_sum += x.square().sum(0)

    def gram(self) -> torch.Tensor:
        """X^T X over every input row seen (float32, symmetric)."""
        if self.xtx is None:
            raise RuntimeError("these statistics were collected without the Hessian")
        return symmetric(self.xtx)

    def sq_norms(self) -> torch.Tensor:
        """Sum over all tokens of each input feature squared: ||X_j||_2^2."""
        return self.xtx.diagonal().clone() if self.xtx is not None else self._sq_sum.clone()

    def norms(self) -> torch.Tensor:
        """||X_j||_2 of each input feature over all calibration tokens."""
        return self.sq_norms().sqrt()

    def hessian(self) -> torch.Tensor:
        """H = 2 X^T X / n, the Hessian of the layer-wise squared reconstruction error."""
        return self.gram().mul_(2.0 / max(self.tokens, 1))


@contextmanager
def watch_inputs(
    groups: list[dict[str, nn.Module]], hessian: bool = False
) -> Iterator[list[InputStats]]:
    """Collect `InputStats` for each group of linears while the block is fed.

    Each group is hooked once, on its first member: every member reads the same tensor.
    """
    stats: list[InputStats] = []
    handles = []
    for group in groups:
        first = next(iter(group.values()))
        weight = weight_out_in(first)
        stat = InputStats(weight.shape[1], weight.device, hessian)
        stats.append(stat)
        handles.append(first.register_forward_pre_hook(lambda _m, args, s=stat: s.add(args[0])))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
