"""The sharing stage: check the request cheaply, share a loaded model, describe it.

`prepare_share` reads only config.json, so that a bad K, a bad map or an
unsupported family fails before the model is loaded or anything measured;
`share_model` does the work on a loaded model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llmopt.errors import BadInput
from llmopt.models.arch import spec_for
from llmopt.share.apply import CONFIG_KEY, share_layers, tie_embeddings
from llmopt.share.config import ShareConfig, resolve_plan
from llmopt.share.plan import SharePlan


def prepare_share(model_spec: str, config: ShareConfig) -> SharePlan:
    """Check `config` against the model's config.json and return the plan.

    Raises:
        BadInput: the model does not resolve, its family is not supported, it
            is shared already, or the plan does not fit its layer count.
    """
    from transformers import AutoConfig

    from llmopt.models import resolve_model

    where = resolve_model(model_spec)
    try:
        hf_config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise BadInput(f"{model_spec}: cannot read its config ({err})") from None
    spec_for(hf_config.model_type)
    if getattr(hf_config, CONFIG_KEY, None) is not None:
        raise BadInput(f"{model_spec}: is shared already; share the original model instead")
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
