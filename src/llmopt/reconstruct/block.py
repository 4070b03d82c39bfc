"""The math of one block: its loss against the teacher's output, and a few Adam steps on it.

Why these choices:

- The MSE of each token is divided by that token's squared norm in the
  target, so a block's loss reads as a fraction of its output's energy
  (comparable across blocks whose residual streams differ by orders of
  magnitude, and the clipping threshold means the same thing in every block),
  and every token counts alike (see `_relative_mse`).
- Adam (no weight decay: the target is the teacher, not small weights) with
  a fresh state per block; a cosine decay to a tenth of the peak within the
  block's steps, so the last updates settle instead of overshooting.
- Exact zeros of the block's linear weights (what pruning left) stay zero:
  their gradients are zeroed before clipping and the weights re-zeroed after
  every step, so Adam's moments never see them.
- Shared tensors stay shared for free: a parameter used by several layers is
  one `nn.Parameter`, updated in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmopt.models.arch import is_linear

MIN_LR_RATIO = 0.1


def _relative_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # Per token: ||out - target||^2 / ||target||^2. Normalising the whole batch at once
    # would let the few attention-sink tokens, whose massive activations hold almost all
    # of a middle block's energy, decide the loss; the next block's RMSNorm sees each
    # token at its own scale, so each token's relative error is what travels on.
    error = (out - target).pow(2).sum(-1)
    return (error / target.pow(2).sum(-1).clamp_min(1e-12)).mean()


def _cosine(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(out, target, dim=-1, eps=1e-8)).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": _relative_mse,
    "cosine": _cosine,
    "mse+cosine": lambda out, target: _relative_mse(out, target) + _cosine(out, target),
}


def block_loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The loss `kind` ('mse', 'cosine', 'mse+cosine') of a block output, in float32."""
    return LOSSES[kind](out.float(), target.float())


@dataclass
class Batch:
    """One calibration batch of a block: its inputs and the teacher's output to reproduce."""

    hidden: torch.Tensor
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    target: torch.Tensor


def first_output(out: Any) -> torch.Tensor:
    """The hidden state a decoder block returns (a tensor, or the first of a tuple)."""
    return out[0] if isinstance(out, tuple | list) else out


class ZeroGuard:
    """Keeps the exact zeros of a block's linear weights at zero while the block trains."""

    def __init__(self, block: nn.Module) -> None:
        """Record where each linear weight of `block` is exactly zero."""
        self.masks: list[tuple[nn.Parameter, torch.Tensor]] = []
        seen: set[int] = set()
        for module in block.modules():
            weight = getattr(module, "weight", None)
            if not is_linear(module) or weight is None or id(weight) in seen:
                continue
            seen.add(id(weight))
            zero = weight.detach() == 0
            if bool(zero.any()):
                self.masks.append((weight, zero))

    @property
    def zeros(self) -> int:
        """How many weights are held at zero."""
        return sum(int(mask.sum()) for _, mask in self.masks)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of the zero weights (before clipping and the optimizer)."""
        for weight, mask in self.masks:
            if weight.grad is not None:
                weight.grad.masked_fill_(mask, 0)

    @torch.no_grad()
    def restore(self) -> None:
        """Set the zero weights back to exactly zero."""
        for weight, mask in self.masks:
            weight.masked_fill_(mask, 0)


def trainable(block: nn.Module) -> list[nn.Parameter]:
    """The block's floating-point parameters that take gradients, each once."""
    return [p for p in block.parameters() if p.requires_grad and p.is_floating_point()]


def _forward(block: nn.Module, batch: Batch, autocast: torch.dtype | None) -> torch.Tensor:
    hidden = batch.hidden.float()
    device = hidden.device.type
    context = torch.autocast(device, dtype=autocast) if autocast is not None else nullcontext()
    with context:
        return first_output(block(hidden, *batch.args, **batch.kwargs))


def _order(count: int, steps: int, generator: torch.Generator) -> Iterator[int]:
    """Batch indices for `steps` steps: every batch once per epoch, in a seeded order."""
    done = 0
    while done < steps:
        for index in torch.randperm(count, generator=generator).tolist()[: steps - done]:
            yield index
            done += 1


def train_block(
    block: nn.Module,
    batches: list[Batch],
    *,
    kind: str,
    steps: int,
    lr: float,
    max_grad_norm: float,
    seed: int,
    autocast: torch.dtype | None = None,
) -> list[float]:
    """Fit `block` to the teacher's outputs in `batches` with `steps` Adam steps; in place.

    Returns:
        The training loss of every step (before that step's update).
    """
    params = trainable(block)
    if not params or not batches:
        return []
    guard = ZeroGuard(block)
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)

    def factor(step: int) -> float:
        progress = step / max(steps - 1, 1)
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(seed)
    max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
    curve: list[float] = []
    with torch.enable_grad():
        for index in _order(len(batches), steps, generator):
            batch = batches[index]
            loss = block_loss(kind, _forward(block, batch, autocast), batch.target)
            loss.backward()
            guard.mask_gradients()
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            guard.restore()
            curve.append(float(loss.detach()))
    return curve
