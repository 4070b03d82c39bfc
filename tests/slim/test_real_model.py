"""smollm2-135m (tied head, 3 KV groups of 3 heads): every axis cut at once, reloaded by stock
transformers, generating with the KV cache. Kept short: 4 calibration blocks of 64 tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from llmopt.evaluate import model_footprint
from llmopt.models import load_model, load_tokenizer
from llmopt.slim import SlimConfig, slim_model
from llmopt.slim.shape import ParamCounter

pytestmark = pytest.mark.real_model


def test_smollm2_slims_reloads_and_generates(tmp_path):
    model, tokenizer = load_model("smollm2-135m"), load_tokenizer("smollm2-135m")
    assert ParamCounter(model.config).total == model_footprint(model).unique_params
    config = SlimConfig(ffn=1 / 3, kv_groups=1, layers=4, calib_samples=4, calib_seq_len=64)
    slim, facts = slim_model(model, tokenizer, config, progress=False)
    assert facts["shape_after"] == {
        "layers": 26, "ffn": 1024, "kv_groups": 2, "heads_per_group": 3, "heads": 6
    }  # fmt: skip
    assert facts["params_after"] == model_footprint(slim).unique_params
    slim.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
    settings = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False}
    with torch.no_grad():
        cached = loaded.generate(ids, use_cache=True, **settings)
        uncached = loaded.generate(ids, use_cache=False, **settings)
        assert torch.equal(cached, uncached)
        assert torch.allclose(slim(ids).logits, loaded(ids).logits, atol=1e-5)
