"""`eval` as a stage: measure a model (it writes no checkpoint, only numbers)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import nn

from llmopt.config import StrictModel
from llmopt.evaluate.summary import EvalConfig, evaluate_model
from llmopt.stage import Stage, StageContext, StageResult


class EvalStageConfig(StrictModel):
    """What `llmopt eval` measures: one field per flag, recipe key and keyword."""

    data: str = "pydoc"
    """pydoc, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG[:SPLIT]]."""
    split: Literal["train", "validation", "all"] = "validation"
    """Which part of the data to score (validation: the held-out split no stage trains on)."""
    text_field: str = "text"
    """Field or column holding the text in .jsonl, .parquet and hf: sources."""
    seq_len: int | None = Field(None, ge=2)
    """Window length (default: 512, or the model's positions if fewer)."""
    stride: int | None = Field(None, ge=1)
    """Slide the window by this many tokens (default: non-overlapping windows)."""
    max_tokens: int | None = Field(None, ge=2)
    """Score only the first N tokens."""
    batch_size: int = Field(4, ge=1)
    """Windows per forward pass."""
    speed: bool = True
    """Also time prefill and decoding, and record peak memory."""
    sample: bool = True
    """Also show a short greedy continuation of a fixed prompt."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:1"""
    progress: bool = True
    """Show a progress bar."""


class EvalStage(Stage):
    """Perplexity on held-out text, size, bytes on disk, speed and memory."""

    name = "eval"
    help = "measure perplexity, size, speed and memory"
    config_class = EvalStageConfig  # type: ignore[assignment] (measures; writes no checkpoint)
    writes_checkpoint = False

    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        from llmopt.models.arch import ArchAdapter

        cfg = self.config
        eval_config = EvalConfig(
            data=cfg.data,
            split=cfg.split,
            text_field=cfg.text_field,
            seq_len=cfg.seq_len or min(512, ArchAdapter(model).max_positions),
            stride=cfg.stride,
            max_tokens=cfg.max_tokens,
            batch_size=cfg.batch_size,
            speed=cfg.speed,
            sample_tokens=24 if cfg.sample else 0,
            progress=cfg.progress,
        )
        metrics = evaluate_model(model, tokenizer, eval_config, folder=ctx.source.folder)
        return StageResult(None, metrics)

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        return []
