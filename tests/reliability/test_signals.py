"""SIGTERM (what cluster schedulers send) during training, with a second run knocking meanwhile."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from .conftest import QUICK, leftovers, one_line, spawn

STEPS = 60
LONG = ("--steps", str(STEPS), "--micro-batch-size", "1", "--seq-len", "16", "--log-every", "1",
        "--warmup", "5", "--no-eval", "--no-progress")  # fmt: skip

# Loaded first by the signalled process (and only by it): after writing a metrics row, the
# run waits until the test opens the gate, so the signal lands mid-run on any machine.
GATED = """
import pathlib, time
from llmopt.train import tracking

_write = tracking.MetricsLog.write


def gated(self, row):
    _write(self, row)
    while not pathlib.Path({gate!r}).exists():
        time.sleep(0.01)


tracking.MetricsLog.write = gated
"""


def _wait_for_training(process: subprocess.Popen, metrics: Path) -> None:
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert process.poll() is None, "the run ended before it was signalled"
        assert time.monotonic() < deadline, "the run never started training"
        time.sleep(0.02)


def test_sigterm_saves_a_checkpoint_and_the_resume_is_exact(cli, tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "out.train"
    gate = tmp_path / "site" / "open"
    gate.parent.mkdir()
    (gate.parent / "sitecustomize.py").write_text(GATED.format(gate=str(gate)))
    process = spawn("train", "tiny-llama", "-o", out, *LONG, path=(gate.parent,),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        _wait_for_training(process, run_dir / "metrics.jsonl")
        # Two more runs while it trains: refused at once, before they load anything.
        r = cli("share", "tiny-llama", "-o", out, "--unique-layers", "2", "--no-eval")
        assert r.code == 2 and f"--output {out}: another llmopt run" in one_line(r.err)
        r = cli("train", "tiny-llama", "-o", tmp_path / "other", *QUICK, "--run-dir", run_dir)
        assert r.code == 2 and f"--run-dir {run_dir}: another llmopt run" in one_line(r.err)
        assert not (tmp_path / "other").exists()
        process.send_signal(signal.SIGTERM)
        gate.write_text("")
        stdout, stderr = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    hint = re.search(r"continue with: --resume (\S+)", stdout)
    assert hint, stdout
    checkpoint = Path(hint.group(1))
    assert checkpoint.parent == run_dir / "checkpoints" and (checkpoint / "trainer.json").is_file()
    stopped_at = json.loads((checkpoint / "trainer.json").read_text())["step"]
    assert 0 < stopped_at < STEPS
    assert not out.exists() and leftovers(tmp_path) == []  # no output, no lock, no temp
    gate.unlink()
    assert stderr == "", stderr
    # The same command again, without --resume: it would mix with the stopped run.
    r = cli("train", "tiny-llama", "-o", out, *LONG)
    assert r.code == 2 and "holds an earlier run" in one_line(r.err)
    # --resume RUN continues that run, to what an uninterrupted run gives, bit for bit.
    r = cli("train", "tiny-llama", "-o", out, *LONG, "--resume", run_dir)
    assert r.code == 0, r.err
    r = cli("train", "tiny-llama", "-o", tmp_path / "straight", *LONG)
    assert r.code == 0, r.err
    resumed = load_file(out / "model.safetensors")
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # one run, each step logged once
