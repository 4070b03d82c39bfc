"""A search whose space holds a planted, clearly best candidate finds it.

The input is tiny-llama with its last two decoder layers silenced (their attention output
and MLP down projections zero, so each passes its input through unchanged). Under
params=0.7, removing those two layers is lossless; every other way to get there (narrower
MLPs, fewer heads, shared layers, other layers) changes the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import run_search

pytestmark = pytest.mark.slow

SILENT = (2, 3)


@pytest.fixture
def planted(tmp_path, tiny_llama, tiny_tokenizer) -> Path:
    with torch.no_grad():
        for index in SILENT:
            layer = tiny_llama.model.layers[index]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    folder = tmp_path / "planted"
    tiny_llama.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _removed_layers(outcome: dict) -> list[int]:
    run = Path(outcome["output"]).parent
    record = json.loads((run / "slim" / "llmopt.json").read_text())
    return record["metrics"]["slim"]["removed"]["layers"]


def test_the_search_finds_the_planted_best_candidate(planted, tmp_path):
    result = run_search(planted, tmp_path / "search", "params=0.7", keep_candidates=True)
    winner = result.winner
    assert winner["label"].startswith("slim") and _removed_layers(winner) == list(SILENT)
    screened = result.rounds[0]
    # Before any recovery the planted candidate is (numerically) identical to the input...
    planted_kl = min(o["kl"] for o in screened)
    assert planted_kl < 1e-5
    # ...and clearly apart from every candidate that does not remove exactly those layers.
    others = [o for o in screened if o["label"].startswith("share")
              or _removed_layers(o) != list(SILENT)]  # fmt: skip
    assert others and min(o["kl"] for o in others) > 20 * max(planted_kl, 1e-6)
    assert winner["perplexity"] <= min(o["perplexity"] for o in result.rounds[-1])
