"""`llmopt run`: every stage kind into one folder, the report, resuming, surviving formats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from llmopt import load_model
from llmopt.pipeline.run import run_recipe
from llmopt.provenance import read_record

from .conftest import FAST_EVAL

EVERY_KIND = {
    "model": "tiny-llama",
    "defaults": {"eval": FAST_EVAL, "calib_samples": 4, "calib_seq_len": 32, "progress": False},
    "stages": {
        "pruned": {"stage": "prune", "method": "sparsegpt", "pattern": "2:4",
                   "save_format": "sparse"},
        "trained": {"stage": "train", "steps": 2, "seq_len": 32, "micro_batch_size": 2,
                    "keep_masks": True},
        "kd": {"stage": "distill", "teacher": "@input", "steps": 2, "seq_len": 32,
               "micro_batch_size": 2, "keep_masks": True},
        "shared": {"stage": "share", "model": "@input", "unique_layers": 2,
                   "save_format": "shared"},
        "shared-kd": {"stage": "distill", "teacher": "@input", "steps": 2, "seq_len": 32,
                      "micro_batch_size": 2},
        "slim": {"stage": "slim", "model": "@input", "ffn": 0.5, "round_to": 16},
        "gptq": {"stage": "quantize", "method": "gptq", "bits": 4, "group_size": 16},
    },
}  # fmt: skip


def _weights(folder):
    model = load_model(folder)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_every_stage_kind_runs_into_one_folder_with_a_report(write_recipe, tmp_path):
    result = run_recipe(write_recipe(EVERY_KIND), tmp_path / "run", say=lambda _: None)
    names = list(EVERY_KIND["stages"])
    assert [s.name for s in result.stages] == names
    assert all(s.status == "ran" for s in result.stages)
    # Compact formats survive later stages unless asked otherwise.
    formats = {n: read_record(tmp_path / "run" / n)["format"] for n in names}
    assert formats == {"pruned": "sparse", "trained": "sparse", "kd": "sparse",
                       "shared": "shared", "shared-kd": "shared", "slim": "dense",
                       "gptq": "quantized"}  # fmt: skip
    kd = read_record(tmp_path / "run" / "kd")
    assert [h["stage"] for h in kd["history"]] == ["prune", "train"]
    assert kd["metrics"]["after"]["sparsity"] >= 0.3  # the 2:4 zeros survived two trainings
    # The report: a row per output (and the input), valid PNG plots, the same prompt sampled.
    report = result.report.read_text()
    table = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(table) == 1 + 1 + len(names)  # header, the input, every output
    for name in names:
        assert any(line.startswith(f"| {name}") for line in table), name
    pngs = sorted((tmp_path / "run" / "report_files").glob("*.png"))
    assert {p.name for p in pngs} == {
        "quality-vs-size.png",
        "loss.png",
        "sparsity.png",
        "speed.png",
    } - (set() if FAST_EVAL["speed"] else {"speed.png"})
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    html = result.report.with_suffix(".html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    # Run again: everything is reused, nothing recomputed.
    again = run_recipe(write_recipe(EVERY_KIND), tmp_path / "run", say=lambda _: None)
    assert [s.status for s in again.stages] == ["reused"] * len(names)


def test_a_changed_stage_is_redone_with_everything_after_it(write_recipe, tmp_path):
    recipe = {**EVERY_KIND, "stages": {k: EVERY_KIND["stages"][k] for k in ("pruned", "trained")}}
    path = write_recipe(recipe)
    run_recipe(path, tmp_path / "run", say=lambda _: None, report=False)
    changed = run_recipe(
        path, tmp_path / "run", sets=["trained.steps=3"], say=lambda _: None, report=False
    )
    assert [s.status for s in changed.stages] == ["reused", "ran"]
    assert read_record(tmp_path / "run" / "trained")["metrics"]["train"]["steps"] == 3
    changed = run_recipe(
        path, tmp_path / "run", sets=["pruned.pattern=4:8"], say=lambda _: None, report=False
    )
    assert [s.status for s in changed.stages] == ["ran", "ran"]


KILLABLE = {
    "model": "tiny-llama",
    "defaults": {"eval": FAST_EVAL, "calib_samples": 4, "calib_seq_len": 32, "progress": False},
    "stages": {
        "pruned": {"stage": "prune", "method": "wanda", "sparsity": 0.5},
        "trained": {"stage": "train", "steps": 60, "seq_len": 32, "micro_batch_size": 2,
                    "save_every": 2, "keep_last": 2, "lr": 1.0e-3},
    },
}  # fmt: skip


@pytest.mark.slow
def test_a_run_killed_during_stage_2_resumes_there_and_ends_the_same(write_recipe, tmp_path):
    path = write_recipe(KILLABLE)
    straight = run_recipe(path, tmp_path / "straight", say=lambda _: None, report=False)
    command = [sys.executable, "-m", "llmopt.cli", "run", str(path), "-o", str(tmp_path / "run"),
               "--no-report"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "run" / "trained.train" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("step-*/trainer.json")) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "run" / "trained").exists()
    resumed = run_recipe(path, tmp_path / "run", say=lambda _: None, report=False)
    assert [s.status for s in resumed.stages] == ["reused", "resumed"]
    a, b = _weights(tmp_path / "straight" / "trained"), _weights(tmp_path / "run" / "trained")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.stages[1].record["metrics"]["train"]["final_loss"] == pytest.approx(
        resumed.stages[1].record["metrics"]["train"]["final_loss"], rel=1e-6
    )


def test_a_one_document_text_file_evaluates(cli, tmp_path):
    text = tmp_path / "book.txt"
    text.write_text(" ".join(f"word{i % 97} and more text" for i in range(3000)))  # no blank line
    out = tmp_path / "m.json"
    r = cli("eval", "tiny-llama", "--data", text, "--no-speed", "--no-sample", "--json", out)
    assert r.code == 0, r.err
    metrics = json.loads(out.read_text())
    train = cli("eval", "tiny-llama", "--data", text, "--split", "train", "--no-speed",
                "--no-sample", "--json", tmp_path / "t.json")  # fmt: skip
    assert train.code == 0, train.err
    held_out = metrics["eval_tokens"]
    trained_on = json.loads((tmp_path / "t.json").read_text())["eval_tokens"]
    assert 0 < held_out < trained_on  # the last tenth of the tokens, apart from the rest


@pytest.mark.slow
def test_the_demo_recipe_runs_on_a_tiny_model(cli, tmp_path):
    r = cli("demo", "--model", "tiny-llama", "--output", tmp_path / "demo",
            "--set", "defaults.calib_samples=4", "--set", "defaults.eval.max_tokens=256",
            "--set", "wanda-2of4-kd.steps=2", "--set", "wanda-2of4-kd.seq_len=32")  # fmt: skip
    assert r.code == 0, r.err
    assert "report:" in r.out and (tmp_path / "demo" / "report.html").is_file()
    for name in ("wanda-2of4", "wanda-2of4-kd"):
        assert name in r.out
    assert read_record(tmp_path / "demo" / "wanda-2of4-kd")["format"] == "sparse"
    # Sparse storage really is smaller on disk.
    sparse = load_file(tmp_path / "demo" / "wanda-2of4" / "sparse_model.safetensors")
    assert any(k.endswith("::bitmask") for k in sparse)
