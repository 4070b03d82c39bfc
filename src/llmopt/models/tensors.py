"""Which tensors of a model are the same memory: the one definition llmopt counts and saves by.

Tied embeddings and layers that share a block hold the very same storage
under several names. Counting unique parameters, writing each tensor once and
re-tying on load all need to agree on when two names are one tensor.
"""

from __future__ import annotations

import torch
from torch import nn

StorageKey = tuple[int, int, tuple[int, ...], tuple[int, ...]]


def storage_key(t: torch.Tensor) -> StorageKey:
    """Two tensors are the same memory when they view the same bytes the same way.

    A wrapper subclass (PyTorch's semi-structured 2:4 weights) has no storage of
    its own: it is its own key.
    """
    if _is_wrapper(t):
        return (id(t), 0, tuple(t.shape), ())
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def as_plain(t: torch.Tensor) -> torch.Tensor:
    """`t` itself, or the dense values of a wrapper subclass (for counting, not for keeping)."""
    return t.to_dense() if _is_wrapper(t) else t


def _is_wrapper(t: torch.Tensor) -> bool:
    from torch.sparse import SparseSemiStructuredTensor

    return isinstance(t, SparseSemiStructuredTensor)


def unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each piece of storage once (under its first name), and the aliases.

    Returns:
        (name -> tensor for the first name of every storage, alias -> that first name).
    """
    seen: dict[StorageKey, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in model.state_dict().items():
        key = storage_key(tensor)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = tensor
    return tensors, aliases
