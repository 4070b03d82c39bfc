"""The stage contract: every technique is a function from a checkpoint to a checkpoint.

A stage is a class with one typed config (a `StageConfig`, the single source
of its command-line flags, its recipe keys and its Python keywords) and four
steps that `llmopt.pipeline.run_stage` calls in this order:

1. `check(source)`: cheap, from the input's config.json and the config alone,
   before any model is loaded; every impossible request is refused here.
2. `prepare(model, tokenizer, ctx)`: the checks that need the loaded model or
   the data (calibration blocks, training rows, a teacher), before the first
   measurement, so bad input still fails in seconds.
3. `apply(model, tokenizer, ctx)`: the work; returns the resulting model and
   the facts that go into `llmopt.json`.
4. `finalize(model, folder, result)`: after the checkpoint is written into the
   (still temporary) output folder and before it is measured: extra files,
   extra facts.

The runner owns everything around these steps (loading, the before/after
measurement, the saver of the checkpoint format, the atomic output folder,
the record), so no stage re-implements any of it. Stages never import the
runner: they receive what they need through `StageContext`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from llmopt.config import StrictModel


class MeasureSettings(StrictModel):
    """How a stage measures its input and its output (the same way before and after)."""

    enabled: bool = True
    """Measure before and after (perplexity, size, bytes on disk, speed)."""
    data: str = "pydoc"
    """Held-out text for perplexity (its validation split)."""
    text_field: str = "text"
    """Field or column holding the text in .jsonl, .parquet and hf: sources."""
    seq_len: int | None = Field(None, ge=2)
    """Perplexity window (default: 512, the training seq-len, or the model's positions if fewer)."""
    max_tokens: int | None = Field(None, ge=2)
    """Score only the first N validation tokens."""
    speed: bool = True
    """Also time prefill and decoding, and record peak memory."""
    sample: bool = True
    """Also record a short greedy continuation of a fixed prompt (what the numbers mean)."""


class StageConfig(StrictModel):
    """Fields every stage that writes a checkpoint has."""

    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:1"""
    save_format: str | None = None
    """Checkpoint format of the output (dense, sparse, shared, ...); default: the input's."""
    progress: bool = True
    """Show progress bars and per-block progress lines."""
    eval: MeasureSettings = Field(default_factory=MeasureSettings)
    """The before/after measurement."""


@dataclass
class ModelSource:
    """A stage's input, known before any weights are read.

    Attributes:
        spec: what the user named (zoo name, folder, hub id).
        location: the local folder, or the hub id.
        hf_config: the transformers config (config.json).
        format: the llmopt checkpoint format of the folder ('dense' for anything else).
        record: its llmopt.json, if it has one.
    """

    spec: str
    location: Path | str
    hf_config: Any
    format: str = "dense"
    record: dict[str, Any] | None = None

    @property
    def folder(self) -> Path | None:
        return self.location if isinstance(self.location, Path) else None


@dataclass
class StageContext:
    """What a running stage may use besides its model and config.

    Attributes:
        source: the input.
        output: the final output folder (None for stages that write none).
        device: where the stage computes.
        load_model: loads any model spec in any llmopt format (e.g. a teacher).
        measure: `measure(model, tokenizer)` measures another model (a teacher) the
            way this stage measures its input and output; None when measuring is off.
        is_main: False on the other processes of a distributed run (they save nothing).
        processes: how many processes run this stage.
    """

    source: ModelSource
    output: Path | None
    device: torch.device
    load_model: Callable[..., nn.Module]
    measure: Callable[[nn.Module, Any], dict[str, Any] | None]
    is_main: bool = True
    processes: int = 1


@dataclass
class StageResult:
    """What `apply` hands back: the model to save (None on non-main processes) and the facts."""

    model: nn.Module | None
    metrics: dict[str, Any] = field(default_factory=dict)
    """Merged into the record's `metrics` (e.g. {'prune': {...}})."""


class Stage(ABC):
    """One technique as a checkpoint-to-checkpoint step (see the module docstring)."""

    name: ClassVar[str]
    """The verb and the recipe's `stage:` value."""
    help: ClassVar[str]
    """One line for `llmopt --help`."""
    config_class: ClassVar[type[StageConfig]]
    writes_checkpoint: ClassVar[bool] = True
    output_format: ClassVar[str | None] = None
    """The format its output is saved in when none is asked for (None: the input's)."""
    distributed: ClassVar[bool] = False
    """True for stages that can run as several processes (`nproc`)."""

    def __init__(self, config: StageConfig, output: Path | None = None, overwrite: bool = False):
        """Takes the validated config, the output folder and whether it may be replaced."""
        self.config = config
        self.output = output
        self.overwrite = overwrite

    def check(self, source: ModelSource) -> None:  # noqa: B027 (optional step)
        """Refuse impossible requests from the input's config alone (raises BadInput)."""

    def before_launch(self, ctx: StageContext) -> None:  # noqa: B027
        """In the launching process, before `ctx.processes` workers start (distributed stages)."""

    def load_device(self, device: torch.device) -> torch.device | None:
        """Where the input model is loaded (None: stays on the CPU)."""
        return device

    def measure_seq_len(self, positions: int) -> int:
        """The default perplexity window on a model with `positions` positions."""
        return min(512, positions)

    def prepare(self, model: nn.Module, tokenizer, ctx: StageContext) -> None:  # noqa: B027
        """Checks and data that need the loaded model, before the first measurement."""

    @abstractmethod
    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        """Do the work; return the model to save and the facts for the record."""

    def finalize(self, model: nn.Module, folder: Path, result: StageResult) -> None:  # noqa: B027
        """Add files or facts to the written checkpoint before it is measured."""

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        """Rows the command line prints after the stage (label, value)."""
        return []
