"""`share` as a stage: N decoder layers run K unique blocks.

Plans: cycle (layer i runs block i mod K), sequence (runs of N/K neighbours
share), adjacent (neighbouring pairs share), or an explicit --map. A shared
block starts as the average of its layers, its first layer, or a layer taken
at even intervals over the depth (stepwise). --lora-rank R gives every layer
of a shared group its own rank-R delta on each linear (from the SVD of what
sharing changed), buying back quality for a little unique storage.

The layers really use the same tensors: unique parameters and memory drop, and
training updates every user of a block at once. --save-format dense writes
every layer out (plain transformers loads it); shared writes each tensor once
(smaller on disk). llmopt restores the sharing when it loads either.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llmopt.errors import BadInput
from llmopt.models.arch import spec_for
from llmopt.share.apply import CONFIG_KEY, share_layers, tie_embeddings
from llmopt.share.config import ShareConfig, resolve_plan
from llmopt.share.plan import SharePlan
from llmopt.stage import ModelSource, Stage, StageContext, StageResult


def check_share(hf_config, config: ShareConfig, spec: str = "model") -> SharePlan:
    """Check `config` against the model's transformers config and return the plan.

    Raises:
        BadInput: the family is not supported, the model is shared already, or the
            plan does not fit its layer count.
    """
    spec_for(hf_config.model_type)
    if getattr(hf_config, CONFIG_KEY, None) is not None:
        raise BadInput(f"{spec}: is shared already; share the original model instead")
    return resolve_plan(config, int(hf_config.num_hidden_layers))


def share_model(model: nn.Module, config: ShareConfig, plan: SharePlan) -> dict[str, Any]:
    """Tie embeddings (if asked) and the layers of `model` in place.

    Returns:
        What was done: the map, K, the rank, whether the embeddings got tied.

    Raises:
        BadInput: see `share_layers` and `tie_embeddings`.
    """
    tied = tie_embeddings(model) if config.tie_embeddings else False
    layout = share_layers(model, plan, config.init, config.lora_rank, config.seed)
    return {
        "block_map": list(layout.plan.block_of),
        "unique_blocks": layout.plan.num_blocks,
        "layers": layout.plan.num_layers,
        "lora_rank": layout.lora_rank,
        "tied_embeddings": tied,
    }


class ShareStage(Stage):
    """Cross-layer parameter sharing of a pretrained model."""

    name = "share"
    help = "share parameters across layers (N layers -> K unique blocks)"
    config_class = ShareConfig

    config: ShareConfig
    plan: SharePlan | None = None

    def check(self, source: ModelSource) -> None:
        """The plan fits the layer count; the family is known; not shared already."""
        self.plan = check_share(source.hf_config, self.config, source.spec)

    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        assert self.plan is not None
        return StageResult(model, {"share": share_model(model, self.config, self.plan)})

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        info = record["metrics"]["share"]
        return [
            (
                "plan",
                f"{info['layers']} layers -> {info['unique_blocks']} blocks: {info['block_map']}",
            ),
            ("lora rank", str(info["lora_rank"])),
            ("tied embeddings", "newly tied" if info["tied_embeddings"] else "unchanged"),
        ]
