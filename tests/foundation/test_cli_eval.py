"""`llmopt eval` end to end, and the error contract: one line, exit status 2."""

from __future__ import annotations

import json

import pytest


def test_eval_prints_a_table_and_writes_json(cli, tmp_path):
    out = tmp_path / "m.json"
    r = cli("eval", "tiny-llama", "--max-tokens", "600", "--seq-len", "128", "--json", out)
    assert r.code == 0, r.err
    assert "perplexity" in r.out and "non-zero" in r.out and "decode" in r.out
    metrics = json.loads(out.read_text())
    assert metrics["model"] == "tiny-llama" and metrics["eval_tokens"] == 600 - 5
    assert 1 < metrics["perplexity"] < 2 * 512  # a random model is near-uniform
    assert metrics["unique_params"] == metrics["total_params"] > 0
    assert metrics["weight_bytes"] > 4 * metrics["unique_params"] * 0.99


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "./missing-dir"], "./missing-dir: no such folder"),
        (["eval", "smollm-135m"], "did you mean 'smollm2-135m'"),
        (["eval", "tiny-llama", "--seq-len", "100000"], "--seq-len 100000"),
        (["eval", "tiny-llama", "--data", "nope.txt"], "nope.txt: no such file"),
        (["eval", "tiny-llama", "--batch-size", "0"], "--batch-size 0"),
        (["eval", "tiny-llama", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli, argv, message):
    r = cli(*argv)
    assert r.code == 2
    assert message in r.err
    assert len(r.err.strip().splitlines()) == 1, r.err


def test_empty_data_is_one_line_exit_2(cli, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    r = cli("eval", "tiny-llama", "--data", empty)
    assert r.code == 2 and "no text found" in r.err and len(r.err.strip().splitlines()) == 1
