"""Run the original model as if a plan had been carried out, without building it.

Zeroing what a plan removes gives the slimmed model's outputs exactly:
- an MLP channel whose input to the down projection is zero writes nothing;
- a query head whose attention output is zero writes nothing, and a KV group
  all of whose query heads are zeroed is read by no one;
- a skipped layer passes its input through (the residual stream unchanged).
So the --params chooser scores every candidate on one model, and the tests
check the surgery against this.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from llmopt.models.arch import ArchAdapter, get_path
from llmopt.slim.plan import SlimPlan


def _keep_mask(kept: torch.Tensor, size: int, repeat: int = 1) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[kept] = 1.0
    return mask.repeat_interleave(repeat)


def _scale_input(mask: torch.Tensor):
    def hook(_module: nn.Module, args: tuple):
        x = args[0]
        return (x * mask.to(device=x.device, dtype=x.dtype), *args[1:])

    return hook


def _pass_through(_module: nn.Module, args: tuple, kwargs: dict, output):
    hidden = args[0] if args else kwargs["hidden_states"]
    # Blocks return the hidden state alone in transformers 5, a tuple before.
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def masked(model: nn.Module, plan: SlimPlan) -> Iterator[nn.Module]:
    """Inside the block, `model` computes what the slimmed model of `plan` would.

    Layers left out are skipped (they still run; their output is replaced by
    their input). Only for measurement: the KV cache still holds every layer.
    """
    adapter = ArchAdapter(model)
    spec, original = adapter.spec, plan.original
    kept = dict(zip(plan.layers, range(len(plan.layers)), strict=True))
    hooks = []
    try:
        for index, block in enumerate(adapter.blocks()):
            if index not in kept:
                hooks.append(block.register_forward_hook(_pass_through, with_kwargs=True))
                continue
            i = kept[index]
            if len(plan.channels[i]) < original.ffn:
                mask = _keep_mask(plan.channels[i], original.ffn)
                down = get_path(block, spec.mlp_out[0])
                hooks.append(down.register_forward_pre_hook(_scale_input(mask)))
            if len(plan.heads[i]) < original.heads:
                mask = _keep_mask(plan.heads[i], original.heads, adapter.head_dim)
                out = get_path(block, spec.attn_out[0])
                hooks.append(out.register_forward_pre_hook(_scale_input(mask)))
        yield model
    finally:
        for hook in hooks:
            hook.remove()
