"""One call that measures a model the same way before and after every stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from llmopt.config import StrictModel
from llmopt.data.corpus import load_corpus
from llmopt.evaluate.footprint import checkpoint_bytes, model_footprint
from llmopt.evaluate.perplexity import evaluate_perplexity
from llmopt.evaluate.sample import SAMPLE_PROMPT, sample_continuation
from llmopt.evaluate.speed import measure_speed


class EvalConfig(StrictModel):
    """What `llmopt eval` and every stage's before/after measurement do."""

    data: str = "pydoc"
    """Data source (see llmopt.data.sources)."""
    split: str = Field("validation", pattern="^(train|validation|all)$")
    """Which split of the source to score; stages use the held-out validation split."""
    text_field: str = "text"
    seq_len: int = Field(512, ge=2)
    """Window length; clipped to the model's positions when not given explicitly."""
    stride: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=2)
    batch_size: int = Field(4, ge=1)
    speed: bool = True
    """Also time prefill and decoding."""
    speed_batch: int = Field(1, ge=1)
    speed_seq_len: int = Field(128, ge=1)
    decode_tokens: int = Field(16, ge=0)
    sample_tokens: int = Field(0, ge=0)
    """Also greedy-decode this many tokens after a fixed prompt (0: none)."""
    progress: bool = True


def evaluate_model(
    model, tokenizer, config: EvalConfig, folder: str | Path | None = None
) -> dict[str, Any]:
    """Perplexity, footprint, bytes on disk (if `folder`) and speed, as a flat dict.

    Raises:
        BadInput: bad data source or a sequence length beyond the model's positions.
    """
    corpus = load_corpus(config.data, tokenizer, split=config.split, text_field=config.text_field)
    ppl = evaluate_perplexity(
        model,
        corpus.ids,
        seq_len=config.seq_len,
        stride=config.stride,
        batch_size=config.batch_size,
        max_tokens=config.max_tokens,
        progress=config.progress,
    )
    metrics: dict[str, Any] = {
        "perplexity": ppl.perplexity,
        "nll": ppl.nll,
        "eval_tokens": ppl.tokens,
        "seq_len": config.seq_len,
        **model_footprint(model).as_dict(),
    }
    if folder is not None:
        metrics.update(checkpoint_bytes(folder))
    if config.speed:
        speed = measure_speed(
            model,
            batch_size=config.speed_batch,
            seq_len=config.speed_seq_len,
            decode_tokens=config.decode_tokens,
        )
        metrics.update(speed.as_dict())
    if config.sample_tokens:
        metrics["sample_prompt"] = SAMPLE_PROMPT
        metrics["sample"] = sample_continuation(
            model, tokenizer, SAMPLE_PROMPT, config.sample_tokens
        )
    return metrics
