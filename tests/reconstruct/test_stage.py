"""`llmopt reconstruct`: bad input refused in one line, formats and zeros survive, recipes."""

from __future__ import annotations

import pytest
import yaml

from llmopt.pipeline.run import run_recipe
from llmopt.provenance import read_record

FAST = [
    "--calib-samples", "8", "--calib-seq-len", "32", "--calib-batch-size", "4", "--steps", "4",
    "--eval-max-tokens", "256", "--eval-seq-len", "64", "--no-eval-speed", "--no-eval-sample",
    "--no-progress",
]  # fmt: skip
QUIET = {"max_tokens": 256, "seq_len": 64, "speed": False, "sample": False}


def _one_line_error(result, *words: str) -> None:
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    for word in words:
        assert word in result.err, result.err


def test_bad_input_is_refused_before_anything_is_written(cli, tmp_path):
    out = tmp_path / "out"
    _one_line_error(cli("reconstruct", "tiny-llama", "-o", out, *FAST), "--teacher")
    rebuild = ("reconstruct", "tiny-llama", "--teacher", "tiny-llama", "-o", out)
    _one_line_error(cli(*rebuild, "--layer-map", "0:0"), "--layer-map", "no target")
    _one_line_error(cli(*rebuild, "--calib-data", "none"), "calibration data")
    _one_line_error(
        cli("reconstruct", "tiny-llama", "--teacher", "tiny-llama", "--steps", "0", "-o", out),
        "--steps",
    )
    assert not out.exists()


def test_a_teacher_of_another_width_or_tokenizer_is_refused(cli, tmp_path):
    from transformers import AutoModelForCausalLM

    from llmopt.models import load_tokenizer
    from llmopt.models.zoo import tiny_config

    narrow = tmp_path / "narrow"
    config = tiny_config("llama")
    config.hidden_size = 32
    AutoModelForCausalLM.from_config(config).save_pretrained(narrow)
    load_tokenizer("tiny-llama").save_pretrained(narrow)
    r = cli("reconstruct", "tiny-llama", "--teacher", narrow, "-o", tmp_path / "o", *FAST)
    _one_line_error(r, "hidden size 32")

    other = tmp_path / "other-tokens"
    from llmopt import load_model

    load_model("tiny-llama").save_pretrained(other)
    tokenizer = load_tokenizer("tiny-llama")
    tokenizer.add_tokens(["zzzunseen"])
    tokenizer.save_pretrained(other)
    r = cli("reconstruct", "tiny-llama", "--teacher", other, "-o", tmp_path / "o", *FAST)
    _one_line_error(r, "tokenizer differs")
    assert not (tmp_path / "o").exists()


def test_the_verb_recovers_a_pruned_model_and_keeps_its_format_and_zeros(cli, tmp_path):
    pruned, out = tmp_path / "pruned", tmp_path / "rec"
    r = cli("prune", "tiny-llama", "--method", "magnitude", "--sparsity", "0.5",
            "--save-format", "sparse", "-o", pruned, *FAST[8:])  # fmt: skip
    assert r.code == 0, r.err
    r = cli("reconstruct", pruned, "--teacher", "tiny-llama", "-o", out, *FAST)
    assert r.code == 0, r.err
    assert "block loss" in r.out and "teacher perplexity" in r.out
    record = read_record(out)
    assert record["format"] == "sparse"
    facts = record["metrics"]["reconstruct"]
    assert facts["layer_map"] == {"targets": [0, 1, 2, 3], "how": "same depth"}
    assert facts["mean_loss_after"] < facts["mean_loss_before"]
    before, after = record["metrics"]["before"], record["metrics"]["after"]
    assert after["sparsity"] == pytest.approx(before["sparsity"])
    assert after["perplexity"] < before["perplexity"]
    assert record["metrics"]["teacher"]["perplexity"] > 0


@pytest.mark.slow
def test_recipes_chain_it_after_pruning_and_slimming(tmp_path):
    recipe = {
        "model": "tiny-llama",
        "defaults": {"eval": QUIET, "calib_samples": 8, "calib_seq_len": 32, "progress": False},
        "stages": {
            "pruned": {"stage": "prune", "method": "sparsegpt", "pattern": "2:4",
                       "save_format": "sparse"},
            "rebuilt": {"stage": "reconstruct", "teacher": "@input", "steps": 4},
            "kd": {"stage": "distill", "teacher": "@input", "steps": 2, "seq_len": 32,
                   "micro_batch_size": 2, "keep_masks": True},
            "slim": {"stage": "slim", "model": "@input", "layers": 1, "ffn": 0.5,
                     "round_to": 16},
            "slim-rebuilt": {"stage": "reconstruct", "teacher": "@input", "steps": 4},
        },
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = run_recipe(path, tmp_path / "run", say=lambda _: None)
    assert all(s.status == "ran" for s in result.stages)
    rebuilt = read_record(tmp_path / "run" / "rebuilt")
    assert rebuilt["format"] == "sparse"
    pruned = read_record(tmp_path / "run" / "pruned")["metrics"]["after"]["sparsity"]
    for name in ("rebuilt", "kd"):  # the 2:4 zeros survive reconstruction and distillation
        after = read_record(tmp_path / "run" / name)["metrics"]["after"]["sparsity"]
        assert after == pytest.approx(pruned), name
    slim = read_record(tmp_path / "run" / "slim")["metrics"]["slim"]
    kept = [i for i in range(4) if i not in slim["removed"]["layers"]]
    facts = read_record(tmp_path / "run" / "slim-rebuilt")["metrics"]["reconstruct"]
    assert facts["layer_map"]["how"] == "slimming record"
    assert facts["layer_map"]["targets"] == [*[k - 1 for k in kept[1:]], 3]
