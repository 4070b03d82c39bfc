"""Make a shallower student from a model by keeping a subset of its decoder blocks.

Used by the distillation benchmark (smollm2-135m with every other layer
removed) and by tests (a tiny-llama with fewer layers). The kept blocks keep
their trained weights; only the bookkeeping that numbers layers is updated so
the model still runs, caches and saves as an ordinary checkpoint.
"""

from __future__ import annotations

from torch import nn

from llmopt.errors import BadInput
from llmopt.models.arch import ArchAdapter


def keep_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """Keep only the decoder blocks `keep` (in that order), in place; returns the model.

    Raises:
        BadInput: an index is out of range, repeated, or nothing is kept.
    """
    adapter = ArchAdapter(model)
    n = adapter.num_layers
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < n for i in keep):
        raise BadInput(f"layers to keep {keep}: need distinct indices in [0, {n})")
    blocks = adapter.blocks()
    new_blocks = nn.ModuleList(blocks[i] for i in keep)
    # Attention modules index the KV cache by their layer number: renumber them.
    for new_index, block in enumerate(new_blocks):
        attn = adapter.attention(block)
        if hasattr(attn, "layer_idx"):
            attn.layer_idx = new_index
        if hasattr(block, "layer_idx"):
            block.layer_idx = new_index
    parent_path, _, name = adapter.blocks_path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, new_blocks)
    config = model.config
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == n:
        config.layer_types = [layer_types[i] for i in keep]
    # An alias on every family's config (n_layer for GPT-2 via attribute_map).
    config.num_hidden_layers = len(keep)
    return model


def drop_every_other_layer(model: nn.Module) -> nn.Module:
    """Keep blocks 0, 2, 4, ... (half the depth, the first block kept); in place."""
    return keep_layers(model, list(range(0, ArchAdapter(model).num_layers, 2)))
