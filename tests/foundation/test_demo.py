"""`llmopt demo --quick` runs every stage end to end on a tiny model."""

from __future__ import annotations

import pytest

from llmopt.provenance import read_record


@pytest.mark.slow
def test_quick_demo_chains_every_stage(cli, tmp_path):
    r = cli("demo", "--quick", "--model", "tiny-llama", "--output", tmp_path)
    assert r.code == 0, r.err
    outputs = ["wanda-50", "sparsegpt-2of4", "sparsegpt-2of4-kd", "share-half", "share-half-kd"]
    for name in outputs:
        assert name in r.out.split("Summary", 1)[1]
    kd = read_record(tmp_path / "sparsegpt-2of4-kd")
    assert [h["stage"] for h in kd["history"]] == ["prune"]
    assert kd["metrics"]["after"]["sparsity"] >= 0.3  # the 2:4 zeros survived distillation
    assert read_record(tmp_path / "share-half-kd")["format"] == "shared"
    assert read_record(tmp_path / "wanda-50")["format"] == "sparse"
