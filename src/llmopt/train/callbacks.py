"""Callbacks: how techniques add behaviour to the loop without copying it.

Every hook receives the trainer (its `model`, `raw_model`, `optimizer`, `step`,
`config`, `rank`, ...) and is a no-op by default. Order within one step:
on_step_start -> forward/backward of all micro-batches -> after_backward
(gradients complete and synchronised, still scaled in fp16) ->
optimizer step -> after_optimizer_step -> on_log (every log_every steps) ->
on_checkpoint (after a checkpoint folder is complete).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmopt.train.trainer import Trainer


class Callback:
    """Base class; override the hooks you need."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After the model is wrapped and any checkpoint is restored."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before the first micro-batch of step `trainer.step`."""

    def after_backward(self, trainer: Trainer) -> None:
        """Gradients of the whole step are accumulated (and all-reduced)."""

    def after_optimizer_step(self, trainer: Trainer) -> None:
        """Parameters were updated (or the fp16 step was skipped)."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """`record` is one metrics row (rank 0 only)."""

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        """A resumable checkpoint was completed at `path` (rank 0 only)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last step, before the model is handed back."""
