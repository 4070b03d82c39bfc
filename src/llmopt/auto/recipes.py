"""A candidate at a round, as a recipe: what `llmopt run` runs and reproduces.

Every candidate is run as an ordinary recipe through `run_recipe` (one run
folder per candidate, so a later round reuses the stages an earlier one
finished), and the winner's recipe is the file the search returns.

The recovery is a distillation from the input model. Its settings are the
distill stage's defaults (`DistillConfig`), read when the search starts, so a
better default is picked up without touching the search; they are written
into the recipe so that it reproduces the same run later. Only the length is
the search's own: the steps that spend the round's token budget, and a
warm-up no longer than a tenth of them (a warm-up longer than the run never
reaches the peak learning rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmopt.auto.candidate import Candidate
from llmopt.auto.config import AutoConfig
from llmopt.config import build
from llmopt.distill.config import DistillConfig
from llmopt.stage import MeasureSettings

RECOVERY_KEYS = (
    "loss",
    "temperature",
    "alpha",
    "lr",
    "min_lr_ratio",
    "weight_decay",
    "seq_len",
    "micro_batch_size",
    "grad_accum",
    "precision",
)
"""The distill keys written into every recovery stage (from the defaults, or --recovery)."""

CALIBRATING = ("prune", "slim", "reconstruct", "quantize")


@dataclass(frozen=True)
class RecipeSettings:
    """What every recipe of one search shares."""

    model: str
    """The input model as a recipe names it (a local folder as an absolute path)."""
    data: str
    text_field: str
    measure: MeasureSettings
    calibration: dict[str, Any]
    """Calibration keys of every stage that calibrates."""
    score_tokens: int
    """Tokens on which `slim --params` compares its candidate shapes by KL (the proxy's)."""
    device: str
    recovery: DistillConfig

    @classmethod
    def create(cls, model: str, config: AutoConfig, seq_len: int) -> RecipeSettings:
        """The settings of a search of `model` with `config`; `seq_len`: the window of
        every measurement.

        Raises:
            BadInput: a key of `config.recovery` that distillation does not have, or a
                bad value.
        """
        text = {} if config.text_field == "text" else {"text_field": config.text_field}
        measure = MeasureSettings(
            data=config.data,
            seq_len=seq_len,
            max_tokens=config.eval_tokens,
            speed=False,
            sample=False,
            **text,
        )
        calibration = {
            "calib_data": config.data,
            "calib_samples": config.calib_samples,
            "calib_dtype": config.calib_dtype,
            **text,
        }
        if config.calib_seq_len is not None:
            calibration["calib_seq_len"] = config.calib_seq_len
        recovery = recovery_config(config)
        return cls(
            model,
            config.data,
            config.text_field,
            measure,
            calibration,
            config.proxy_tokens,
            config.device,
            recovery,
        )

    @property
    def tokens_per_step(self) -> int:
        """Training tokens of one recovery step (one process)."""
        r = self.recovery
        return r.micro_batch_size * r.grad_accum * r.seq_len

    def steps(self, tokens: int) -> int:
        """Recovery steps that spend `tokens` (0 for none; at least one otherwise)."""
        return 0 if tokens <= 0 else max(1, round(tokens / self.tokens_per_step))


def recovery_config(config: AutoConfig) -> DistillConfig:
    """The distill stage's defaults with the search's `recovery` keys over them.

    Raises:
        BadInput: a key distillation does not have, or a bad value.
    """
    return build(DistillConfig, dict(config.recovery), where="--recovery")


def recovery_stage(settings: RecipeSettings, steps: int, keep_masks: bool) -> dict[str, Any]:
    """The distillation from the input that recovers a candidate."""
    r = settings.recovery
    stage: dict[str, Any] = {"stage": "distill", "teacher": "@input", "data": settings.data}
    if settings.text_field != "text":
        stage["text_field"] = settings.text_field
    stage["steps"] = steps
    stage["warmup"] = min(r.warmup, math.ceil(steps / 10))
    stage.update({key: getattr(r, key) for key in RECOVERY_KEYS})
    stage["keep_masks"] = keep_masks
    return stage


def candidate_recipe(candidate: Candidate, settings: RecipeSettings, steps: int) -> dict[str, Any]:
    """The recipe (as YAML holds it) of `candidate` with `steps` recovery steps (0: none)."""
    defaults: dict[str, Any] = {
        "eval": settings.measure.model_dump(exclude_defaults=True),
        "progress": False,
    }
    if settings.device != "auto":
        defaults["device"] = settings.device
    stages: dict[str, dict[str, Any]] = {}
    for stage in candidate.stages:
        stages[stage["stage"]] = _with_calibration(stage, settings)
    if steps > 0:
        stages["recover"] = recovery_stage(settings, steps, candidate.pruned)
    if candidate.quantize is not None:
        stages["quantize"] = _with_calibration(candidate.quantize, settings)
    description = f"llmopt auto candidate {candidate.id}: {candidate.label}" + (
        f", recovered for {steps} steps" if steps else ""
    )
    return {
        "description": description,
        "model": settings.model,
        "defaults": defaults,
        "stages": stages,
    }


def _with_calibration(stage: dict[str, Any], settings: RecipeSettings) -> dict[str, Any]:
    if stage["stage"] not in CALIBRATING:
        return dict(stage)
    out = {**stage, **settings.calibration}
    if stage["stage"] == "slim" and "params" in stage:
        # slim's own search scores shapes by KL like the screening, on as many tokens
        # (its default, 2048 tokens per shape, cost minutes per candidate on a CPU)
        out["score_tokens"] = settings.score_tokens
    return out
