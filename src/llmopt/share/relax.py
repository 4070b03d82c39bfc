"""Relaxed sharing: each layer adds its own low-rank delta to a shared linear.

A relaxed linear computes `base(x) + B (A x)`, where `base` is the layer's own
linear module whose weight is the shared Parameter and `A` (r x in), `B`
(out x r) belong to this layer alone. They are initialised from the truncated
SVD of (the layer's original weight - the shared weight), so with r equal to
min(out, in) the layer computes exactly what it computed before sharing.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from llmopt.models.arch import weight_out_in


class LowRankDelta(nn.Module):
    """A linear layer plus a per-layer low-rank correction `B @ A`."""

    def __init__(self, base: nn.Module, rank: int):
        super().__init__()
        weight = weight_out_in(base)
        out_features, in_features = weight.shape
        self.base = base
        self.rank = rank
        kw = {"dtype": weight.dtype, "device": weight.device}
        self.lora_a = nn.Parameter(torch.zeros(rank, in_features, **kw))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.lora_a), self.lora_b)

    def delta(self) -> torch.Tensor:
        """The correction as an (out, in) matrix."""
        return self.lora_b @ self.lora_a

    def merged_weight(self) -> torch.Tensor:
        """The base weight plus the correction, in the base module's stored layout."""
        stored = self.base.weight.detach()
        delta = self.delta().detach()
        # weight_out_in may be a transposed view of the stored weight (GPT-2's
        # Conv1D keeps (in, out)); add the correction in the stored layout.
        same_layout = weight_out_in(self.base).stride() == stored.stride()
        return stored + (delta if same_layout else delta.t())


def clipped_rank(rank: int, module: nn.Module) -> int:
    """`rank` limited to min(out, in) of the module: more adds nothing."""
    return min(rank, *weight_out_in(module).shape)


@torch.no_grad()
def init_from_svd(delta: LowRankDelta, target: torch.Tensor, generator: torch.Generator) -> None:
    """Set A, B so that B @ A is the best rank-r approximation of `target` (out x in).

    Each factor takes the square root of the singular values, so both start at
    the same scale. A zero target (a layer whose weight is the shared one)
    would give A = B = 0, a saddle that training never leaves; there A is
    random and B zero, the usual LoRA start, which keeps B @ A = 0.
    """
    r = delta.rank
    if not torch.any(target):
        bound = 1.0 / target.shape[1] ** 0.5
        a = torch.rand(delta.lora_a.shape, generator=generator) * 2 * bound - bound
        delta.lora_a.copy_(a)
        delta.lora_b.zero_()
        return
    u, s, vh = torch.linalg.svd(target.double(), full_matrices=False)
    root = s[:r].sqrt()
    delta.lora_b.copy_(u[:, :r] * root)
    delta.lora_a.copy_(root[:, None] * vh[:r])
