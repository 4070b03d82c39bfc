"""--keep-masks: exactly-zero weights of block linears stay exactly zero while training."""

from __future__ import annotations

import torch

from llmopt.models.arch import ArchAdapter
from llmopt.train import TrainConfig, run_training


def _prune_half(model) -> None:
    adapter = ArchAdapter(model)
    with torch.no_grad():
        for block in adapter.blocks():
            for linear in adapter.block_linears(block).values():
                w = linear.weight
                w.masked_fill_(w.abs() <= w.abs().median(), 0)


def _zeros(model) -> tuple[int, list[torch.Tensor]]:
    masks = [(m.weight == 0) for m in ArchAdapter(model).all_linears().values()]
    return sum(int(m.sum()) for m in masks), masks


def _train(model, source, keep: bool, precision: str = "fp32"):
    config = TrainConfig(
        steps=4,
        micro_batch_size=2,
        seq_len=32,
        lr=1e-2,
        warmup=0,
        weight_decay=0.1,
        keep_masks=keep,
        progress=False,
        precision=precision,
    )
    run_training(model, config, source)


def test_zero_count_unchanged(tiny_llama, packed_source):
    _prune_half(tiny_llama)
    count, masks = _zeros(tiny_llama)
    _train(tiny_llama, packed_source(), keep=True)
    after, masks_after = _zeros(tiny_llama)
    assert after == count
    assert all(torch.equal(a, b) for a, b in zip(masks, masks_after, strict=True))


def test_without_the_flag_zeros_move(tiny_llama, packed_source):
    _prune_half(tiny_llama)
    count, _ = _zeros(tiny_llama)
    _train(tiny_llama, packed_source(), keep=False)
    assert _zeros(tiny_llama)[0] < count // 2  # the test above would notice a leak


def test_keep_masks_under_fp16(tiny_llama, packed_source):
    _prune_half(tiny_llama)
    count, _ = _zeros(tiny_llama)
    _train(tiny_llama, packed_source(), keep=True, precision="fp16")
    assert _zeros(tiny_llama)[0] == count
