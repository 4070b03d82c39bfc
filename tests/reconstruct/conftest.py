"""Fixtures for block-wise reconstruction: tiny models of every family, pruned copies, data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmopt.calibrate.data import Calibration
from llmopt.models.arch import ArchAdapter, weight_out_in

FAMILIES = ("tiny-llama", "tiny-gpt2", "tiny-opt", "tiny-neox")


def calibration(samples: int = 8, seq_len: int = 32, batch_size: int = 4) -> Calibration:
    """Random token blocks from the tiny vocabulary, on the CPU, without progress lines."""
    ids = torch.randint(2, 500, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    return Calibration(ids=ids, batch_size=batch_size, device=torch.device("cpu"), progress=False)


@torch.no_grad()
def prune_half(model: nn.Module) -> nn.Module:
    """Zero the smaller half (by magnitude) of every block linear's weight, in place."""
    adapter = ArchAdapter(model)
    for block in adapter.blocks():
        for module in adapter.block_linears(block).values():
            weight = weight_out_in(module)
            cut = weight.abs().flatten().kthvalue(weight.numel() // 2).values
            weight.masked_fill_(weight.abs() <= cut, 0)
    return model


def zero_sets(model: nn.Module) -> dict[str, torch.Tensor]:
    """Where every block linear's weight is exactly zero, by full name."""
    return {
        name: (weight_out_in(module) == 0).clone()
        for name, module in ArchAdapter(model).all_linears().items()
    }


@pytest.fixture
def calib() -> Calibration:
    return calibration()
