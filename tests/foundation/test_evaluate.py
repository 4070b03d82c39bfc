"""Perplexity against a direct computation, footprint counting, provenance, outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmopt.errors import BadInput
from llmopt.evaluate import evaluate_perplexity, model_footprint
from llmopt.evaluate.perplexity import windows
from llmopt.outputs import check_output, staged_output
from llmopt.provenance import read_record, start_record, write_record


def _reference_nll(model, ids: torch.Tensor, seq_len: int) -> tuple[float, int]:
    """Score each non-overlapping window independently, the obvious way."""
    total, count = 0.0, 0
    for start in range(0, ids.numel(), seq_len):
        window = ids[start : start + seq_len]
        if window.numel() < 2:
            continue  # a window's first token has no context; alone it scores nothing
        with torch.no_grad():
            logits = model(input_ids=window[None]).logits[0].double()
        total += float(F.cross_entropy(logits[:-1], window[1:], reduction="sum"))
        count += window.numel() - 1
    return total, count


@pytest.mark.parametrize("n_tokens", [130, 129, 200])
def test_perplexity_equals_direct_computation(tiny_llama, n_tokens):
    ids = torch.randint(0, 512, (n_tokens,), generator=torch.Generator().manual_seed(0))
    result = evaluate_perplexity(tiny_llama, ids, seq_len=32, batch_size=3, progress=False)
    total, count = _reference_nll(tiny_llama, ids, 32)
    assert result.tokens == count == n_tokens - math.ceil(n_tokens / 32)
    assert result.nll == pytest.approx(total / count, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)


def test_sliding_window_scores_every_token_once():
    spans = windows(100, seq_len=32, stride=8)
    targets = [t for s, e, first in spans for t in range(first, e)]
    assert targets == list(range(1, 100))
    assert all(first - s >= 32 - 8 or s == 0 for s, _, first in spans)


def test_sliding_window_scores_the_tokens_full_windows_skip(tiny_llama):
    ids = torch.randint(0, 512, (150,), generator=torch.Generator().manual_seed(1))
    full = evaluate_perplexity(tiny_llama, ids, seq_len=64, progress=False)
    slid = evaluate_perplexity(tiny_llama, ids, seq_len=64, stride=16, progress=False)
    assert full.tokens == 149 - 2  # the first token of each of 3 windows, bar token 0
    assert slid.tokens == 149


def test_seq_len_beyond_positions(tiny_llama):
    with pytest.raises(BadInput, match="only 512 positions"):
        evaluate_perplexity(tiny_llama, torch.arange(10), seq_len=4096, progress=False)


def test_footprint_counts_tied_embeddings_once():
    from transformers import AutoModelForCausalLM

    from llmopt.models.zoo import tiny_config

    tied = AutoModelForCausalLM.from_config(tiny_config("gpt2", vocab_size=100, layers=2))
    fp = model_footprint(tied)
    embed = 100 * 64
    assert fp.total_params == fp.unique_params + embed
    assert fp.unique_params == sum(p.numel() for p in tied.parameters())
    with torch.no_grad():
        tied.transformer.wte.weight[:10] = 0
    assert model_footprint(tied).nonzero_params == fp.nonzero_params - 10 * 64


def test_provenance_chains_history(tmp_path):
    first = start_record("prune", "tiny-llama", {"sparsity": 0.5}, seed=0)
    first.metrics["after"] = {"perplexity": 3.0}
    (tmp_path / "a").mkdir()
    write_record(tmp_path / "a", first)
    second = start_record("train", str(tmp_path / "a"), {"steps": 10})
    assert [h["stage"] for h in second.history] == ["prune"]
    (tmp_path / "b").mkdir()
    write_record(tmp_path / "b", second)
    record = read_record(tmp_path / "b")
    assert record["stage"] == "train" and record["history"][0]["args"] == {"sparsity": 0.5}
    assert record["versions"]["torch"] == torch.__version__


def test_staged_output_never_leaves_half_a_folder(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(dest) as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("crash")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with staged_output(dest) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(BadInput, match="not empty"):
        check_output(dest)
    with pytest.raises(RuntimeError), staged_output(dest, overwrite=True) as tmp:
        raise RuntimeError("crash")
    assert (dest / "v").read_text() == "1"  # the old output survives a failed overwrite
    with staged_output(dest, overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (dest / "v").read_text() == "2" and len(list(tmp_path.iterdir())) == 1
