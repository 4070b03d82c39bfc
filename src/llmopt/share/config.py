"""The configuration of a sharing stage, and how it becomes a plan."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmopt.config import PositiveInt
from llmopt.errors import BadInput, did_you_mean
from llmopt.share.init import INITS
from llmopt.share.plan import PLANS, SharePlan, make_plan, parse_map
from llmopt.share.storage import SAVE_FORMATS
from llmopt.stage import StageConfig


def _one_of(value: str, registry: dict, what: str) -> str:
    if value not in registry:
        raise ValueError(
            f"unknown {what}{did_you_mean(value, registry)}; known: {', '.join(registry)}"
        )
    return value


class ShareConfig(StageConfig):
    """What `llmopt share` does: one field per flag, recipe key and keyword."""

    unique_layers: PositiveInt | None = Field(None, json_schema_extra={"aliases": ["-k"]})
    """K, the number of unique blocks (may be left out when `map` is given)."""
    strategy: str = "cycle"
    """Which layers share: cycle, sequence or adjacent (see llmopt.share.plan)."""
    map: str | None = None
    """An explicit map, e.g. '0,0,1,1,2,2': block id of each layer."""
    keep_ends: bool = False
    """Give the first and the last layer blocks of their own."""
    init: str = "average"
    """Initial value of a shared block: average, first or stepwise."""
    lora_rank: int = Field(0, ge=0)
    """Rank of each layer's own delta on the shared linears (0: none)."""
    tie_embeddings: bool = False
    """Also tie the output head to the input embedding."""
    seed: int = 0
    """Seed of the random factors of the per-layer deltas."""

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _one_of(v, PLANS, "strategy")

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        return _one_of(v, INITS, "initialisation")

    @field_validator("save_format")
    @classmethod
    def _save_format(cls, v: str | None) -> str | None:
        # dense: every layer written out (plain transformers loads it); shared: each tensor once.
        return v if v is None else _one_of(v, SAVE_FORMATS, "save format")


def resolve_plan(config: ShareConfig, num_layers: int) -> SharePlan:
    """The plan that `config` asks for on a model of `num_layers` layers.

    Raises:
        BadInput: K outside [1, N], a map of the wrong length or with unknown
            or unused block ids, or K too small for the strategy.
    """
    if config.map is not None:
        if config.keep_ends:
            raise BadInput("--keep-ends applies to the strategies, not to an explicit --map")
        return parse_map(config.map, num_layers, config.unique_layers)
    if config.unique_layers is None:
        raise BadInput("give --unique-layers K or an explicit --map")
    return make_plan(num_layers, config.unique_layers, config.strategy, config.keep_ends)
