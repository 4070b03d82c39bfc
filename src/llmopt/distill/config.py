"""`DistillConfig`: what `llmopt distill` does: the training stage's knobs plus the teacher's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmopt.config import PositiveInt
from llmopt.train.stage import TrainStageConfig


class DistillConfig(TrainStageConfig):
    """What to distil from, with which loss, and how to train (every `train` key applies)."""

    teacher: str | None = None
    """Teacher model spec; may be omitted when --cache-teacher names an existing cache."""
    loss: Literal["kl", "reverse-kl", "jsd"] = "kl"
    """Divergence between the softened teacher and student distributions."""
    temperature: float = Field(2.0, gt=0)
    """Softening temperature T; the divergence is multiplied by T^2."""
    alpha: float = Field(0.5, ge=0, le=1)
    """Weight of the distillation term; 1 - alpha weights the hard-label cross-entropy."""
    beta: float = Field(0.5, ge=0, le=1)
    """JSD mixture weight: 0 is forward KL, 1 is reverse KL."""
    hidden_loss: Literal["mse", "cosine"] | None = None
    """Also match hidden states of mapped layers (online teacher only)."""
    hidden_weight: float = Field(1.0, ge=0)
    """Weight of the hidden-state loss."""
    layer_map: str | None = None
    """'S:T,...' student:teacher layer pairs (default: evenly spread, last to last)."""
    cache_teacher: str | None = None
    """Folder of the offline top-k cache: made if missing, then trained from."""
    cache_k: int = Field(64, ge=1)
    """Top entries per position kept in a new cache."""
    cache_batch_size: PositiveInt = 4
    """Rows per teacher forward when making the cache."""
    chunk_tokens: int | None = Field(None, ge=1)
    """Sequence positions per loss chunk (bounds the fp32 softmax temporaries);
    default 16 on a CPU (cache-sized), 1024 on a GPU (fewer kernel launches)."""
