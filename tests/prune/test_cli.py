"""`llmopt prune`: what it prints and records, bad input, and recovery with --keep-masks."""

from __future__ import annotations

import json

import pytest
import torch

from llmopt import load_model
from llmopt.models.arch import ArchAdapter, weight_out_in

FAST = ("--calib-samples", "4", "--calib-seq-len", "32", "--eval-max-tokens", "256")


def zero_masks(model) -> dict[str, torch.Tensor]:
    return {n: weight_out_in(m) == 0 for n, m in ArchAdapter(model).all_linears().items()}


def test_prune_wanda_owl_sparse(cli, tiny_llama_dir, tmp_path):
    out = tmp_path / "pruned"
    r = cli(
        "prune", tiny_llama_dir, "--method", "wanda", "--sparsity", "0.5", "--owl",
        "--save-format", "sparse", "-o", out, *FAST,
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "block 3" in r.out and "perplexity" in r.out and "overall" in r.out
    record = json.loads((out / "llmopt.json").read_text())
    assert record["format"] == "sparse" and record["stage"] == "prune"
    prune = record["metrics"]["prune"]
    assert len(prune["layer_sparsity"]) == 28
    targets = prune["block_target"]
    assert sum(targets) / len(targets) == pytest.approx(0.5) and len(set(targets)) > 1
    before, after = record["metrics"]["before"], record["metrics"]["after"]
    assert after["weight_bytes"] > 0 and after["sparsity"] > before["sparsity"]
    assert record["args"]["owl"] is True
    model = load_model(out)
    assert sum(int(m.sum()) for m in zero_masks(model).values()) == prune["zero_weights"]


def bad(cli, tmp_path, *args: str, model: str = "tiny-llama") -> str:
    out = tmp_path / "out"
    r = cli("prune", model, "-o", out, *args, "--no-eval")
    assert r.code == 2, (r.code, r.err)
    assert len(r.err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))  # nothing left behind
    return r.err


@pytest.mark.parametrize(
    "args,needle",
    [
        (("--method", "wanda", "--sparsity", "1.0"), "--sparsity 1.0"),
        (("--method", "wanda", "--sparsity", "-0.1"), "--sparsity -0.1"),
        (("--method", "wandaa", "--sparsity", "0.5"), "did you mean 'wanda'"),
        (("--method", "magnitude", "--pattern", "4:4"), "4:4"),
        (("--method", "magnitude", "--pattern", "3:5"), "M=5 does not divide"),
        (("--method", "wanda", "--sparsity", "0.5", "--calib-data", "none"), "calibration"),
        (("--method", "wanda", "--sparsity", "0.5", "--scope", "global"), "--scope"),
        (("--method", "sparsegpt", "--threshold", "0.1"), "--threshold"),
        (("--method", "magnitude"), "--sparsity"),
        (("--method", "magnitude", "--pattern", "2:4", "--accelerate-2to4"), "CUDA"),
        (("--method", "magnitude", "--sparsity", "0.5", "--targets", "nothing"), "--targets"),
        (("--method", "magnitude", "--sparsity", "0.5", "--targets", "("), "regular expression"),
    ],
)
def test_bad_input(cli, tmp_path, args, needle):
    assert needle in bad(cli, tmp_path, *args)


def test_unknown_family(cli, tmp_path, tiny_llama_dir, tiny_tokenizer):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "gptj", vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128, rotary_dim=8
    )
    folder = tmp_path / "gptj"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    err = bad(cli, tmp_path, "--method", "magnitude", "--sparsity", "0.5", model=str(folder))
    assert "'gptj' is not supported" in err


def test_recovery_keeps_the_zeros(cli, tmp_path):
    pruned, trained = tmp_path / "pruned", tmp_path / "trained"
    r = cli(
        "prune", "tiny-llama", "--method", "sparsegpt", "--pattern", "2:4",
        "--save-format", "sparse", "--no-eval", "-o", pruned, *FAST[:4],
    )  # fmt: skip
    assert r.code == 0, r.err
    r = cli(
        "train", pruned, "--data", "pydoc", "--steps", "3", "--micro-batch-size", "2",
        "--seq-len", "32", "--lr", "1e-2", "--keep-masks", "--no-eval", "--no-progress",
        "-o", trained,
    )  # fmt: skip
    assert r.code == 0, r.err
    before, after = load_model(pruned), load_model(trained)
    masks_before, masks_after = zero_masks(before), zero_masks(after)
    assert all(torch.equal(masks_before[n], masks_after[n]) for n in masks_before)
    changed = [
        n for n, m in ArchAdapter(after).all_linears().items()
        if not torch.equal(weight_out_in(m), weight_out_in(ArchAdapter(before).all_linears()[n]))
    ]  # fmt: skip
    assert changed  # it did train
