"""`llmopt share`: a real run on a tiny model, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch

from llmopt import load_model


def test_share_prints_sizes_and_perplexity_and_writes_a_loadable_folder(cli, tmp_path):
    out = tmp_path / "shared"
    r = cli(
        "share", "tiny-llama", "--unique-layers", "2", "--strategy", "sequence",
        "--save-format", "shared", "--eval-max-tokens", "600", "-o", out,
    )  # fmt: skip
    assert r.code == 0, r.err
    for needle in ("unique params", "weights on disk", "perplexity", "[0, 0, 1, 1]"):
        assert needle in r.out
    record = json.loads((out / "llmopt.json").read_text())
    assert record["stage"] == "share" and record["format"] == "shared"
    before, after = record["metrics"]["before"], record["metrics"]["after"]
    assert after["unique_params"] < before["unique_params"]
    assert after["weight_bytes"] < 0.7 * before["weight_bytes"]
    assert after["perplexity"] > 1.0
    model = load_model(out)
    assert model.model.layers[0].mlp.up_proj.weight is model.model.layers[1].mlp.up_proj.weight


def test_lora_and_tied_embeddings_from_the_command_line(cli, tmp_path):
    r = cli(
        "share", "tiny-llama", "--map", "0,1,1,0", "--lora-rank", "2", "--tie-embeddings",
        "--init", "stepwise", "--no-eval", "-o", tmp_path / "o",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "newly tied" in r.out
    record = json.loads((tmp_path / "o" / "llmopt.json").read_text())
    assert record["format"] == "dense"  # relaxed + dense: merged per-layer weights
    assert record["metrics"]["share"]["block_map"] == [0, 1, 1, 0]
    assert record["metrics"]["storage"] == {"block_map": [0, 1, 1, 0], "layout": "dense"}
    assert torch.isfinite(load_model(tmp_path / "o")(torch.tensor([[3, 4, 5]])).logits).all()


@pytest.fixture(scope="module")
def unsupported_dir(tmp_path_factory):
    """A tiny model of a family the adapter does not know (BLOOM)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("bloom")
    config = AutoConfig.for_model("bloom", hidden_size=16, n_layer=2, n_head=2, vocab_size=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["-k", "0"], "--unique-layers 0"),
        (["-k", "5"], "--unique-layers 5: must be between 1 and the model's 4 layers"),
        (["--map", "0,1,0"], "has 3 entries, the model has 4 layers"),
        (["--map", "0,1,0,9", "-k", "2"], "unknown block id 9"),
        (["-k", "2", "--strategy", "cyclic"], "did you mean 'cycle'"),
        (["-k", "2", "--init", "avg"], "--init avg"),
        (["-k", "1", "--strategy", "adjacent"], "at least 2 blocks"),
        (["-k", "2", "--lora-rank", "-1"], "--lora-rank -1"),
        (["-k", "2", "--save-format", "sparse"], "--save-format sparse"),
        ([], "give --unique-layers K or an explicit --map"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, extra, needle):
    r = cli("share", "tiny-llama", *extra, "-o", tmp_path / "out")
    assert r.code == 2
    assert needle in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_unsupported_family_is_bad_input(cli, tmp_path, unsupported_dir):
    r = cli("share", unsupported_dir, "-k", "1", "-o", tmp_path / "out")
    assert r.code == 2
    assert "model family 'bloom' is not supported" in r.err


def test_sharing_a_shared_model_is_refused(cli, tmp_path):
    assert cli("share", "tiny-llama", "-k", "2", "--no-eval", "-o", tmp_path / "a").code == 0
    r = cli("share", tmp_path / "a", "-k", "1", "--no-eval", "-o", tmp_path / "b")
    assert r.code == 2 and "shared already" in r.err
