"""How a training run ends: its result, or the exceptions that stop it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM (or `request_stop`) ended training; `checkpoint` is where to resume from."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted after step {step}")
        self.step = step
        self.checkpoint = checkpoint


class TooManySkippedSteps(RuntimeError):
    """fp16 overflowed on too many consecutive steps: the run is diverging."""


class NonFiniteTraining(TooManySkippedSteps):
    """fp32/bf16: the gradient norm was NaN or infinite on too many consecutive steps."""


@dataclass
class TrainResult:
    """What a finished run hands back.

    Attributes:
        model: the trained model, unwrapped (None on processes other than 0 and
            under FSDP, where `state_dict` holds the full weights on process 0).
        history: one row per step: loss, lr, grad_norm, skipped, objective metrics.
    """

    model: nn.Module | None
    state_dict: dict[str, torch.Tensor] | None
    history: list[dict[str, Any]]
    steps: int
    tokens: int
    wall_time_s: float
    skipped_steps: int
    summary: dict[str, Any] = field(default_factory=dict)
