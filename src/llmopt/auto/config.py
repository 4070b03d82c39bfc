"""`AutoConfig`: every knob of the strategy search, validated once.

The budget itself is parsed apart (`llmopt.auto.budget`); the rest decides how
much the search may spend: how many candidates are screened, how fast they are
thinned out, how many tokens each measurement and each recovery gets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from llmopt.config import PositiveInt, StrictModel


class AutoConfig(StrictModel):
    """How `llmopt auto` searches (the flags of the verb, the keywords of `auto_search`)."""

    recovery_tokens: int = Field(32768, ge=0)
    """Training tokens of the recovery (distillation from the input) every finalist gets;
    earlier rounds get this divided by eta per round left; 0: no recovery."""
    time_limit: float | None = Field(None, gt=0)
    """Seconds: no new candidate is started after this (the best feasible so far is returned)."""
    data: str = "pydoc"
    """Text for calibration and recovery (its training split) and for every measurement
    (its validation split, which no stage trains or calibrates on)."""
    text_field: str = "text"
    """Field or column holding the text in .jsonl, .parquet and hf: sources."""
    pareto: bool = False
    """Search the whole size/quality front (multi-objective) below the budget, not only
    candidates at the budget."""
    trials: PositiveInt = 16
    """Candidates screened by the proxy (the single-technique ones among them)."""
    eta: int = Field(3, ge=2)
    """Successive halving: each round keeps 1/eta of the candidates."""
    finalists: PositiveInt = 2
    """Candidates that get the full recovery; the winner is the best of them."""
    proxy_tokens: int = Field(1024, ge=16)
    """Held-out tokens of the screening proxy (KL to the input); x eta per round."""
    max_proxy_tokens: int = Field(4096, ge=16)
    """The proxy never uses more held-out tokens than this."""
    eval_tokens: int = Field(2048, ge=16)
    """Held-out tokens of every stage's perplexity (the final choice is made on it)."""
    eval_seq_len: int | None = Field(None, ge=2)
    """Window of every measurement (default: 512, or the model's positions if fewer)."""
    proxy_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Dtype of the proxy's forward passes (bfloat16: about 3x faster on CPUs that have it)."""
    calib_samples: PositiveInt = 32
    """Calibration blocks of every pruning, slimming and quantization stage."""
    calib_seq_len: int | None = Field(256, ge=2)
    """Tokens per calibration block (default: 256; none: each stage's own default)."""
    calib_dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Dtype of the calibration forwards (statistics and weight updates stay float32)."""
    recovery: dict[str, Any] = Field(default_factory=dict)
    """Distillation keys that replace the distill stage's defaults in every recovery
    (e.g. {'seq_len': 256}); the defaults are used for everything not named."""
    seed: int = 0
    """Seed of the sampler (every stage keeps its own default seed)."""
    device: str = "auto"
    """Where every stage computes: auto, cpu, cuda, cuda:1."""
    progress: bool = True
    """Print one line per candidate and round."""
    keep_candidates: bool = False
    """Keep the checkpoints of every candidate (default: a candidate's run folder is removed
    once it is out of the search, and the finalists' but the winner's at the end)."""
