"""smollm2-135m at 50%: Wanda and SparseGPT much better than magnitude (the published ordering).

Kept short: 16 calibration blocks of 128 tokens, 2048 scored tokens.
"""

from __future__ import annotations

import pytest

from llmopt import load_model
from llmopt.data.corpus import load_corpus
from llmopt.evaluate.perplexity import evaluate_perplexity
from llmopt.models import load_tokenizer
from llmopt.prune import PruneConfig, prune_model

pytestmark = pytest.mark.real_model


def test_published_ordering_at_half_sparsity():
    tokenizer = load_tokenizer("smollm2-135m")
    ids = load_corpus("pydoc", tokenizer, split="validation").ids
    ppl = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = load_model("smollm2-135m")
        config = PruneConfig(method=method, sparsity=0.5, calib_samples=16, calib_seq_len=128)
        result = prune_model(model, tokenizer, config, progress=False)
        assert result.sparsity == pytest.approx(0.5, abs=0.01)
        ppl[method] = evaluate_perplexity(
            model, ids, seq_len=256, max_tokens=2048, progress=False
        ).perplexity
    assert ppl["sparsegpt"] < 0.5 * ppl["magnitude"], ppl
    assert ppl["wanda"] < 0.5 * ppl["magnitude"], ppl


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bf16_calibration_forwards_give_the_fp32_perplexity(method):
    """The evidence for calib_dtype's bfloat16 default: same quality as float32 forwards."""
    tokenizer = load_tokenizer("smollm2-135m")
    ids = load_corpus("pydoc", tokenizer, split="validation").ids
    ppl = {}
    for dtype in ("float32", "bfloat16"):
        model = load_model("smollm2-135m")
        config = PruneConfig(method=method, sparsity=0.5, calib_samples=16, calib_seq_len=128,
                             calib_dtype=dtype)  # fmt: skip
        prune_model(model, tokenizer, config, progress=False)
        ppl[dtype] = evaluate_perplexity(
            model, ids, seq_len=256, max_tokens=2048, progress=False
        ).perplexity
    assert ppl["bfloat16"] == pytest.approx(ppl["float32"], rel=0.02), ppl
