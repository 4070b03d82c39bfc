"""The configuration of one slimming stage: what to remove and how to score importance."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from llmopt.calibrate.data import CalibrationSettings
from llmopt.config import Fraction01, PositiveInt
from llmopt.stage import StageConfig

NonNegativeInt = Annotated[int, Field(ge=0)]


class SlimConfig(StageConfig, CalibrationSettings):
    """What `llmopt slim` removes: one field per flag, recipe key and keyword.

    Give any of `ffn`, `heads` or `kv_groups`, `layers`; or `params` alone,
    which chooses among widths and depth itself.
    """

    ffn: Fraction01 | None = None
    """Fraction of each layer's MLP channels to remove (the same count in every layer)."""
    heads: Fraction01 | None = None
    """Fraction of query heads to remove, the same number in every KV group and layer."""
    kv_groups: NonNegativeInt | None = None
    """Key/value groups to remove from every layer, with their query heads."""
    layers: NonNegativeInt | None = None
    """Decoder layers to remove."""
    params: float | None = Field(None, gt=0.0, lt=1.0)
    """Fraction of the parameters to keep (0.8: at most 80%); llmopt chooses widths and depth."""
    round_to: PositiveInt = 64
    """MLP channel counts are rounded to a multiple of this (kernel-friendly shapes)."""
    ffn_score: Literal["activation", "weighted", "taylor"] = "activation"
    """MLP channel importance: mean |activation| (Minitron), that times the norm of the
    channel's down-projection column, or the first-order Taylor estimate |a * dL/da|."""
    head_score: Literal["output", "taylor"] = "output"
    """Attention head importance: mean norm of the head's contribution to the block
    output, or the first-order Taylor estimate; a KV group scores the sum of its heads."""
    layer_score: Literal["influence", "perplexity"] = "influence"
    """Layer importance: Block Influence (1 - cos(input, output)), or the measured
    increase of the calibration loss when the layer is skipped."""
    params_depths: PositiveInt = 4
    """--params: depths tried, evenly spaced from the layers-only cut to no layer cut
    (each also with one KV group, or one query head per group, removed)."""
    score_tokens: PositiveInt = 2048
    """Calibration tokens for the full-model measurements: the KL of --params
    candidates, --layer-score perplexity and the Taylor scores."""
