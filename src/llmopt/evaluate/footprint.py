"""Size of a model: parameters, unique parameters, non-zeros, bytes on disk.

`total` counts every use of a parameter (a tied head counts again, a block
shared by five layers counts five times): the size of the model as a dense
network. `unique` counts each piece of storage once: what memory holds.
`nonzero` counts the non-zero entries of the unique storage: what pruning
removed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from llmopt.models.tensors import as_plain, storage_key

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".npz")


@dataclass(frozen=True)
class Footprint:
    total_params: int
    unique_params: int
    nonzero_params: int
    param_bytes: int
    """Bytes of the unique parameters in memory, at their dtype."""

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / max(self.unique_params, 1)

    def as_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "sparsity": self.sparsity}


def model_footprint(model: nn.Module) -> Footprint:
    """Count total, unique and non-zero parameters of a model."""
    total = 0
    seen: dict[tuple, torch.Tensor] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        total += param.numel()
        seen.setdefault(storage_key(param), param)
    unique = sum(p.numel() for p in seen.values())
    nonzero = sum(int(torch.count_nonzero(as_plain(p.detach()))) for p in seen.values())
    nbytes = sum(p.numel() * p.element_size() for p in seen.values())
    return Footprint(total, unique, nonzero, nbytes)


def checkpoint_bytes(folder: str | Path) -> dict[str, int]:
    """Bytes on disk of a checkpoint folder: its weight files, and everything."""
    folder = Path(folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = sum(p.stat().st_size for p in files if p.name.endswith(WEIGHT_SUFFIXES))
    return {"weight_bytes": weights, "disk_bytes": sum(p.stat().st_size for p in files)}
