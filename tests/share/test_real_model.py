"""Sharing the real smollm2-135m: exact unique count and a consistent KV cache."""

from __future__ import annotations

import pytest
import torch

from llmopt import load_model
from llmopt.evaluate import model_footprint
from llmopt.models.arch import ArchAdapter
from llmopt.share.apply import share_layers
from llmopt.share.plan import make_plan


@pytest.mark.real_model
def test_smollm2_shared_to_ten_blocks():
    model = load_model("smollm2-135m")
    adapter = ArchAdapter(model)
    per_block = sum(p.numel() for p in adapter.blocks()[0].parameters())
    before = model_footprint(model).unique_params
    share_layers(model, make_plan(adapter.num_layers, 10, "sequence"), init="average")
    assert model_footprint(model).unique_params == before - (adapter.num_layers - 10) * per_block
    prompt = torch.tensor([[1, 504, 3458, 314, 253, 1345]])
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
