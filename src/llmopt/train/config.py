"""`TrainConfig`: every knob of the training loop, validated once.

The stage configs of `train` and `distill` extend it (`llmopt.train.stage`),
and their command-line flags, recipe keys and Python keywords are generated
from those configs.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmopt.config import PositiveInt, StrictModel
from llmopt.errors import BadInput

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]

# Fields that must be equal for a checkpoint to be resumed exactly: they decide
# the data order, the per-step batch, the schedule or the numerics.
RESUME_FIELDS: tuple[str, ...] = (
    "steps",
    "micro_batch_size",
    "grad_accum",
    "seq_len",
    "pack",
    "seed",
    "lr",
    "min_lr_ratio",
    "warmup",
    "weight_decay",
    "precision",
    "fsdp",
)


class TrainConfig(StrictModel):
    """One training run."""

    steps: PositiveInt = 100
    """Optimizer steps."""
    micro_batch_size: PositiveInt = 4
    """Rows per forward/backward on each process."""
    grad_accum: PositiveInt = 1
    """Micro-batches accumulated per optimizer step (per process)."""
    seq_len: int = Field(512, ge=2)
    """Tokens per row (packed) or the longest row (--no-pack)."""
    pack: bool = True
    """Pack documents into full rows; False: one document per row, padded."""
    lr: float = Field(3e-4, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """The cosine decays to lr * min_lr_ratio at the last step."""
    warmup: int = Field(10, ge=0)
    """Linear warm-up steps (clipped to `steps`)."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW decay, applied to matrices only (not norms, biases, embeddings)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas, as 'b1,b2'."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this; 0 turns clipping off."""
    precision: PrecisionName = "auto"
    """auto: bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with
    AMX or AVX512-BF16), else fp32. Master weights stay fp32."""
    init_scale: float = Field(2.0**16, gt=0)
    """fp16 only: the loss scaler's initial scale."""
    max_consecutive_skips: PositiveInt = 20
    """fp16 only: stop when this many optimizer steps in a row overflowed."""
    max_nonfinite_steps: PositiveInt = 5
    """fp32/bf16: a step whose gradient norm is NaN or infinite is skipped (the weights
    stay as they were); stop with an error when this many steps in a row were."""
    seed: int = 0
    """Data order and initialisation seed."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:1"""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state (FSDP2, one unit per block)."""
    grad_checkpointing: bool = False
    """Recompute block activations in the backward pass (less memory, more time)."""
    compile: bool = False
    """torch.compile the model."""
    log_every: PositiveInt = 10
    """Steps per metrics.jsonl row."""
    save_every: int = Field(0, ge=0)
    """Write a resumable checkpoint every N steps (0: only when interrupted)."""
    keep_last: PositiveInt = 2
    """How many of the newest checkpoints to keep."""
    resume: str | None = None
    """A checkpoint folder, or a run's checkpoints folder (its newest is used)."""
    keep_masks: bool = False
    """Keep weights of decoder-block linears that are exactly zero at the start at zero."""
    progress: bool = True
    """Show a progress bar."""

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup > self.steps:
            self.__dict__["warmup"] = self.steps
        return self

    def resume_mismatches(self, saved: dict) -> list[str]:
        """The fields (as 'name: saved -> now') that differ from a checkpoint's config."""
        out = []
        for name in RESUME_FIELDS:
            now = getattr(self, name)
            before = saved.get(name)
            if isinstance(now, tuple):
                before = tuple(before) if before is not None else None
            if before != now:
                out.append(f"{name}: {before!r} in the checkpoint, {now!r} now")
        return out


def check_batch(config: TrainConfig, num_examples: int, world_size: int) -> None:
    """Fail early when one optimizer step needs more rows than the data has.

    Raises:
        BadInput: fewer examples than micro_batch_size * grad_accum * processes.
    """
    need = config.micro_batch_size * config.grad_accum * world_size
    if num_examples < need:
        raise BadInput(
            f"the data has {num_examples} training rows of seq-len {config.seq_len}, but one "
            f"step needs {need} (micro-batch {config.micro_batch_size} x grad-accum "
            f"{config.grad_accum} x {world_size} processes)"
        )
