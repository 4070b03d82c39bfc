"""The embedded smollm2-135m: converted once from its GGUF, loads, and is a real model."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.real_model


def test_smollm2_parameters_and_perplexity():
    from llmopt import load_model
    from llmopt.data import load_corpus
    from llmopt.evaluate import evaluate_perplexity, model_footprint
    from llmopt.models import ArchAdapter, load_tokenizer

    model = load_model("smollm2-135m")
    tokenizer = load_tokenizer("smollm2-135m")
    fp = model_footprint(model)
    assert fp.unique_params == 134_515_008  # 134.5M, the tied head counted once
    assert fp.total_params == fp.unique_params + 49152 * 576
    assert ArchAdapter(model).num_layers == 30
    corpus = load_corpus("pydoc", tokenizer, split="validation")
    ppl = evaluate_perplexity(model, corpus.ids, seq_len=256, max_tokens=2048, progress=False)
    assert math.isfinite(ppl.perplexity)
    assert ppl.perplexity < 50 < len(tokenizer)  # a trained model, far below uniform (49152)
