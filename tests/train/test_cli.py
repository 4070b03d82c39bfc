"""`llmopt train`: a real run end to end, and bad input caught before any work."""

from __future__ import annotations

import json

import pytest

QUICK = ("--steps", "2", "--micro-batch-size", "2", "--seq-len", "32", "--no-progress")


def test_train_writes_checkpoint_with_record(cli, tmp_path):
    out = tmp_path / "out"
    r = cli("train", "tiny-llama", "-o", out, *QUICK, "--eval-max-tokens", "512",
            "--log-every", "1")  # fmt: skip
    assert r.code == 0, r.err
    record = json.loads((out / "llmopt.json").read_text())
    assert record["stage"] == "train"
    assert record["metrics"]["train"]["steps"] == 2
    assert record["metrics"]["before"]["perplexity"] > 0
    assert record["metrics"]["after"]["perplexity"] > 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("tokens_per_s" in r for r in rows)
    assert "perplexity " in r.out and " -> " in r.out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--grad-accum", "0"), "--grad-accum 0: input should be greater than or equal to 1"),
        (("--micro-batch-size", "0"), "--micro-batch-size 0"),
        (("--micro-batch-size", "100000"), "one step needs 100000"),
        (("--nproc", "4", "--micro-batch-size", "20000"), "x 4 processes"),
        (("--fsdp",), "--fsdp needs several processes"),
        (("--seq-len", "100000"), "--seq-len 100000: the model has"),
        (("--nproc", "0"), "--nproc 0"),
        (("--resume", "nowhere"), "no checkpoint there"),
    ],
)
def test_bad_input_exits_2_without_output(cli, tmp_path, flags, message):
    out = tmp_path / "out"
    r = cli("train", "tiny-llama", "-o", out, *QUICK, "--no-eval", *flags)
    assert r.code == 2, (r.out, r.err)
    assert message in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A finished tiny-llama run with a checkpoint after step 2."""
    from llmopt.cli import main

    out = tmp_path_factory.mktemp("ck") / "out"
    assert main(["train", "tiny-llama", "-o", str(out), *QUICK, "--no-eval",
                 "--save-every", "2"]) == 0  # fmt: skip
    return out.with_name("out.train")


def test_resume_from_another_model_is_bad_input(cli, tmp_path, checkpointed):
    r = cli("train", "tiny-gpt2", "-o", tmp_path / "o", *QUICK, "--no-eval",
            "--resume", checkpointed)  # fmt: skip
    assert r.code == 2 and "incompatible" in r.err and "model:" in r.err, r.err


def test_resume_with_other_config_is_bad_input(cli, tmp_path, checkpointed):
    r = cli("train", "tiny-llama", "-o", tmp_path / "o", *QUICK, "--no-eval", "--lr", "0.1",
            "--resume", checkpointed)  # fmt: skip
    assert r.code == 2 and "lr: 0.0003 in the checkpoint, 0.1 now" in r.err, r.err
    assert not (tmp_path / "o").exists()


def test_resume_of_finished_run_writes_output(cli, tmp_path, checkpointed):
    r = cli("train", "tiny-llama", "-o", tmp_path / "o", *QUICK, "--no-eval",
            "--resume", checkpointed)  # fmt: skip
    assert r.code == 0, r.err
    assert (tmp_path / "o" / "model.safetensors").is_file()
