"""A search killed in the middle resumes without redoing any finished candidate; a search
with the time limit stops starting new work and still returns the best feasible model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from llmopt.errors import BadInput

from .conftest import FAST, fast_flags, run_search

pytestmark = pytest.mark.slow


def _events(folder) -> list[dict]:
    path = folder / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_killed_search_resumes_without_redoing_finished_candidates(tmp_path):
    folder = tmp_path / "search"
    command = [sys.executable, "-m", "llmopt.cli", "auto", "tiny-llama", "--budget",
               "nonzero=0.5", "-o", str(folder), *fast_flags()]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while sum(e["event"] == "done" for e in _events(folder)) < 2:
        assert process.poll() is None, "the search ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = _events(folder)
    finished = {(e["candidate"], e["round"]) for e in before if e["event"] == "done"}
    assert not (folder / "model").exists()

    result = run_search("tiny-llama", folder, "nonzero=0.5")
    resumed = [e for e in _events(folder)[len(before) :] if e["event"] == "start"]
    assert resumed and not finished & {(e["candidate"], e["round"]) for e in resumed}
    assert result.complete and result.verified["meets"]
    assert len(result.rounds[0]) == FAST["trials"]


def test_a_resumed_search_must_keep_its_settings(tmp_path):
    folder = tmp_path / "search"
    run_search("tiny-llama", folder, "params=0.7", trials=2, finalists=1, recovery_tokens=0)
    with pytest.raises(BadInput, match="holds a search with other settings"):
        run_search("tiny-llama", folder, "params=0.6", trials=2, finalists=1, recovery_tokens=0)


def test_the_time_limit_stops_new_work_and_returns_the_best_feasible_model(tmp_path, monkeypatch):
    from llmopt.auto import clock, evaluate

    # Each candidate run "takes" a minute on a fake clock; the limit allows two starts.
    elapsed = [0.0]
    run = evaluate.run_candidate

    def slow_run(*args, **kwargs):
        elapsed[0] += 60.0
        return run(*args, **kwargs)

    monkeypatch.setattr(clock, "now", lambda: elapsed[0])
    monkeypatch.setattr(evaluate, "run_candidate", slow_run)
    result = run_search("tiny-llama", tmp_path / "search", "params=0.7", time_limit=100)
    assert not result.complete
    assert [len(r) for r in result.rounds] == [2, 0]
    assert result.verified["meets"]
    best = min(result.rounds[0], key=lambda o: o["perplexity"])
    assert result.winner == best
    assert "time limit stopped the search" in result.report.read_text()


def test_a_candidate_a_stage_refuses_is_left_out_once_and_the_search_goes_on(tmp_path, monkeypatch):
    from llmopt.auto import evaluate

    run = evaluate.run_candidate

    def refuse_sharing(ctx, recipe, candidate_id):
        if "stage: share" in recipe.read_text():
            raise BadInput("share: refused for this test")
        return run(ctx, recipe, candidate_id)

    monkeypatch.setattr(evaluate, "run_candidate", refuse_sharing)
    folder = tmp_path / "search"
    result = run_search("tiny-llama", folder, "params=0.7")
    assert result.verified["meets"]
    labels = [o["label"] for r in result.rounds for o in r]
    assert labels and not any(label.startswith("share") for label in labels)
    failed = [e for e in _events(folder) if e["event"] == "failed"]
    assert failed and "refused for this test" in failed[0]["reason"]
    assert len({e["candidate"] for e in failed}) == len(failed)  # each tried once
    assert len(result.rounds[0]) == 4  # the others took its place
    again = run_search("tiny-llama", folder, "params=0.7")
    assert [e for e in _events(folder) if e["event"] == "failed"] == failed
    assert again.winner == result.winner


def test_a_start_that_failed_on_bad_input_binds_the_folder_to_nothing(tmp_path):
    folder = tmp_path / "search"
    quick = {"trials": 2, "finalists": 1, "recovery_tokens": 0}
    with pytest.raises(BadInput, match="no such file"):
        run_search("tiny-llama", folder, "params=0.7", data=str(tmp_path / "gone.txt"), **quick)
    assert run_search("tiny-llama", folder, "params=0.7", **quick).verified["meets"]
