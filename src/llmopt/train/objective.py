"""The trainer contract: what an objective computes and how the trainer scales it.

An objective turns one micro-batch into a SUM of per-label-token losses. The
trainer counts the label tokens of the whole optimizer step (every
micro-batch, every rank) before the first backward and multiplies each
micro-batch's `loss_sum` by 1/that count. Summing first and dividing by the
global count is what makes accumulation and data parallelism give exactly the
full-batch gradient; averaging per-micro-batch means does not when micro-batches
hold different numbers of label tokens.

Label convention (shared by every objective): `labels` are NOT shifted. They
are aligned with `input_ids` (usually a copy with -100 on padding), and the
objective predicts `labels[:, t + 1]` from position `t`. So the label tokens of
a batch are `labels[:, 1:] != -100`; `count_label_tokens` is the one place that
says so, and objectives must score exactly those positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from llmopt.train.precision import Precision

IGNORE_INDEX = -100


@dataclass
class ObjectiveOutput:
    """One micro-batch's contribution to a step.

    Attributes:
        loss_sum: differentiable scalar, the SUM of per-label-token losses of
            this micro-batch (not a mean).
        metrics: extra SUMS over the micro-batch's label tokens to log (e.g.
            {"kd": ..., "ce": ...}); the trainer divides them by the step's
            global label-token count, as it does the loss.
    """

    loss_sum: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class Objective(Protocol):
    """What the trainer calls on every micro-batch."""

    name: str

    def setup(self, model: nn.Module, device: torch.device, precision: Precision) -> None:
        """Prepare before training (e.g. move a teacher to `device`)."""
        ...

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters trained alongside the model (e.g. hidden-state projections)."""
        ...

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        """Loss SUM over the label tokens of `batch` (see the module docstring)."""
        ...


def count_label_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Number of scored positions in `batch`: `labels[:, 1:] != -100` (int64 scalar tensor)."""
    return (batch["labels"][:, 1:] != IGNORE_INDEX).sum()


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with logits[:, :-1]: `labels[:, 1:]`, -100 where ignored."""
    return labels[:, 1:]


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys a Hugging Face causal LM takes; other batch keys are for objectives."""
    return {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}


def token_cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of next-token cross-entropy over positions whose shifted label is not -100.

    Takes logits [B, T, V] and unshifted labels [B, T]; computes in fp32 so
    that autocast does not reduce the precision of the log-softmax.
    """
    # Shift the labels, not the logits: slicing logits[:, :-1] makes the
    # flattening copy B*T*V floats (and again in backward); padding the
    # targets with one ignored position keeps the logits a free view.
    targets = F.pad(shifted_targets(labels), (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


class LMObjective:
    """Next-token cross-entropy, summed over label tokens (labels unshifted, see module doc).

    By default the head and the loss run fused (`llmopt.train.head_loss`): same
    value and gradients as `token_cross_entropy_sum` on the model's logits, up
    to float summation order, without the full fp32 logits. `fused=False`
    keeps the plain path (the reference the fused one is tested against).
    """

    name = "lm"

    def __init__(self, fused: bool = True) -> None:
        """Takes whether to fuse the head with the loss where the model allows it."""
        self.fused = fused

    def setup(self, model: nn.Module, device: torch.device, precision: Precision) -> None:
        """Nothing to prepare: the LM loss needs only the model."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """No parameters besides the model's."""
        return []

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        """Returns the CE sum; the model is called without labels so HF does not average."""
        from llmopt.train.head_loss import (
            capture_head_input,
            find_head,
            linear_cross_entropy_sum,
        )

        head = find_head(model) if self.fused else None
        if head is None:
            logits = model(**model_inputs(batch), use_cache=False).logits
            return ObjectiveOutput(loss_sum=token_cross_entropy_sum(logits, batch["labels"]))
        with capture_head_input(head) as found:
            model(**model_inputs(batch), use_cache=False)
        loss_sum = linear_cross_entropy_sum(found.hidden, found.head, batch["labels"])
        return ObjectiveOutput(loss_sum=loss_sum)
