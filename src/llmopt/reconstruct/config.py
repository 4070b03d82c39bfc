"""`ReconstructConfig`: what `llmopt reconstruct` does: a teacher, calibration data, steps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmopt.calibrate.data import CalibrationSettings
from llmopt.config import PositiveInt
from llmopt.stage import StageConfig

LossName = Literal["mse", "cosine", "mse+cosine"]


class ReconstructConfig(StageConfig, CalibrationSettings):
    """Block-wise reconstruction: each student block learns its teacher block's output."""

    teacher: str | None = None
    """The model whose block outputs are the targets (the dense original: '@input' in a recipe)."""
    steps: PositiveInt = 32
    """Optimizer steps per decoder block, each on one calibration batch."""
    lr: float = Field(1e-4, gt=0)
    """Peak Adam learning rate of a block's weights (cosine decay to a tenth within each block)."""
    loss: LossName = "mse"
    """Block-output loss per token, averaged: mse (squared error over the target's squared
    norm), cosine (1 - cosine similarity), or their sum."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Clip each block's gradient norm to this; 0 turns clipping off."""
    layer_map: str | None = None
    """'S:T,...': student block S reproduces teacher block T's output (default: from the input's
    slimming record, else block i to i, else evenly spread with the last to the last)."""
