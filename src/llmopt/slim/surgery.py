"""Carry out a `SlimPlan`: slice the tensors and build an ordinary, smaller transformers model.

The new model is built from the new config (`slim_config`) by transformers
itself, then given the sliced tensors. Every attribute the modelling code
derives from the config (heads per KV group, head size, split sizes, each
layer's index into the KV cache, `layer_types`) is therefore consistent by
construction, and `save_pretrained` writes a folder that stock
`AutoModelForCausalLM.from_pretrained` loads.

Which tensors shrink, by the adapter's names:
- MLP: the `mlp_in` linears lose output rows (and bias entries), the `mlp_out`
  linear loses input columns; its bias stays (it is added once per token).
- attention (separate q/k/v only): q loses the rows of removed heads, k and v
  the rows of removed KV groups (with bias entries), the output projection the
  columns of removed heads.
- removed layers are dropped and the rest renumbered; everything outside the
  blocks (embeddings, final norm, head) is copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmopt.models.arch import ArchAdapter, get_path, qkv_names, stored_weight, weight_out_in
from llmopt.models.loading import empty_model
from llmopt.slim.plan import SlimPlan
from llmopt.slim.shape import slim_config


def expand_units(units: torch.Tensor, size: int) -> torch.Tensor:
    """Element indices of whole units (heads of `size` rows): [1, 3], 2 -> [2, 3, 6, 7]."""
    return (units.unsqueeze(1) * size + torch.arange(size)).flatten()


def _sliced_linear(
    module: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The weight (and bias) of a linear keeping `rows` outputs and `cols` inputs."""
    weight = weight_out_in(module)
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    out = {"weight": stored_weight(module, weight)}
    bias = getattr(module, "bias", None)
    if bias is not None:
        out["bias"] = bias.data if rows is None else bias.data.index_select(0, rows.to(bias.device))
    return out


def sliced_block(
    adapter: ArchAdapter, block: nn.Module, plan: SlimPlan, kept: int
) -> dict[str, torch.Tensor]:
    """The changed tensors of one kept block, by name relative to the block.

    Args:
        adapter: the original model's adapter.
        block: the original block.
        plan: the plan.
        kept: position of this block among the kept layers.
    """
    spec, original = adapter.spec, plan.original
    out: dict[str, torch.Tensor] = {}

    def put(name: str, tensors: dict[str, torch.Tensor]) -> None:
        out.update({f"{name}.{key}": value for key, value in tensors.items()})

    channels = plan.channels[kept]
    if len(channels) < original.ffn:
        for name in spec.mlp_in:
            put(name, _sliced_linear(get_path(block, name), rows=channels))
        for name in spec.mlp_out:
            put(name, _sliced_linear(get_path(block, name), cols=channels))
    heads, groups = plan.heads[kept], plan.groups[kept]
    if len(heads) < original.heads:
        q, k, v = qkv_names(spec)
        size = adapter.head_dim
        head_rows, group_rows = expand_units(heads, size), expand_units(groups, size)
        put(q, _sliced_linear(get_path(block, q), rows=head_rows))
        put(k, _sliced_linear(get_path(block, k), rows=group_rows))
        put(v, _sliced_linear(get_path(block, v), rows=group_rows))
        put(spec.attn_out[0], _sliced_linear(get_path(block, spec.attn_out[0]), cols=head_rows))
    return out


def slim_state(model: nn.Module, plan: SlimPlan) -> dict[str, torch.Tensor]:
    """The state dict of the slimmed model: kept blocks renumbered, sliced where the plan cuts."""
    adapter = ArchAdapter(model)
    prefix = adapter.blocks_path + "."
    blocks = adapter.blocks()
    new_index = {old: new for new, old in enumerate(plan.layers)}
    changed: dict[str, torch.Tensor] = {}
    for new, old in enumerate(plan.layers):
        for name, tensor in sliced_block(adapter, blocks[old], plan, new).items():
            changed[f"{prefix}{old}.{name}"] = tensor
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        target = name
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            if int(index) not in new_index:
                continue
            target = f"{prefix}{new_index[int(index)]}.{rest}"
        state[target] = changed.get(name, tensor)
    return state


def build_slim_model(model: nn.Module, plan: SlimPlan) -> nn.Module:
    """A new, smaller model carrying out `plan` on `model` (which is not changed).

    Returns:
        An ordinary transformers causal LM in eval mode, on the device and at
        the dtype of `model`.
    """
    first = next(model.parameters())
    config = slim_config(model.config, plan.shape, plan.layers)
    new = empty_model(config, first.dtype)  # every tensor is overwritten below
    new.to(first.device)
    new.load_state_dict(slim_state(model, plan), strict=True)
    if getattr(model, "generation_config", None) is not None:
        new.generation_config = copy.deepcopy(model.generation_config)
    return new.eval()
