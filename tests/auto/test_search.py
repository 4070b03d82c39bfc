"""Whole searches on tiny-llama: every returned model meets its budget (counted here, on the
returned folder), its recipe reproduces it bit for bit through `llmopt run`, the report shows
every candidate, and a finished search run again does nothing twice."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from llmopt import load_model
from llmopt.evaluate.footprint import WEIGHT_SUFFIXES, checkpoint_bytes, model_footprint

from .conftest import run_search

pytestmark = pytest.mark.slow

BUDGETS = ["params=0.7", "nonzero=0.5", "bytes=0.4"]


def _cost(kind: str, folder, original_folder) -> float:
    if kind == "bytes":
        return (
            checkpoint_bytes(folder)["weight_bytes"]
            / checkpoint_bytes(original_folder)["weight_bytes"]
        )
    key = {"params": "unique_params", "nonzero": "nonzero_params"}[kind]
    new, old = model_footprint(load_model(folder)), model_footprint(load_model(original_folder))
    return getattr(new, key) / getattr(old, key)


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_returned_model_meets_its_budget(searches, budget, tiny_llama_dir):
    result = searches[budget]
    kind, fraction = budget.split("=")
    cost = _cost(kind, result.model, tiny_llama_dir)
    assert cost <= float(fraction)
    assert result.verified["meets"] and result.verified["cost"] == pytest.approx(cost)
    assert result.complete and result.winner["round"] == len(result.rounds) - 1


def _weight_files(folder) -> dict[str, tuple[dict, dict[str, bytes]]]:
    """Each weight file's metadata and every tensor's bytes. Not the file's bytes: safetensors
    writes the metadata keys in a hash-map order that changes from one process to the next."""
    from safetensors import safe_open

    files = {}
    for path in folder.iterdir():
        if path.name.endswith(WEIGHT_SUFFIXES):
            with safe_open(path, "pt") as handle:
                tensors = {
                    key: handle.get_tensor(key)
                    .contiguous()
                    .view(-1)
                    .view(torch.uint8)
                    .numpy()
                    .tobytes()
                    for key in handle.keys()  # noqa: SIM118 (a safe_open handle is not iterable)
                }
                files[path.name] = (handle.metadata(), tensors)
    return files


@pytest.mark.parametrize("budget", BUDGETS)
def test_the_returned_recipe_reproduces_the_returned_model_bit_for_bit(
    searches, budget, cli, tmp_path
):
    result = searches[budget]
    run = cli("run", result.recipe, "-o", tmp_path / "again", "--no-report")
    assert run.code == 0, run.err
    last = list(yaml.safe_load(result.recipe.read_text())["stages"])[-1]
    again = tmp_path / "again" / last
    files = _weight_files(result.model)
    assert files and files == _weight_files(again)
    assert (result.model / "config.json").read_text() == (again / "config.json").read_text()


def test_every_search_recovered_its_finalists_with_the_same_budget(searches):
    for result in searches.values():
        finalists = result.rounds[-1]
        assert len(finalists) == 2
        assert len({o["recovery_tokens"] for o in finalists}) == 1
        assert finalists[0]["recovery_tokens"] >= 128


def test_the_report_shows_every_candidate_the_rankings_and_why_the_winner_won(searches):
    result = searches["nonzero=0.5"]
    text = result.report.read_text()
    for round_outcomes in result.rounds:
        for outcome in round_outcomes:
            assert f"| {outcome['candidate']}" in text
    winner = result.winner
    why = text.split("## Why the winner won")[1].split("##")[0]
    assert winner["label"] in why and f"{winner['perplexity']:.2f}" in why
    assert "rank r0 (KL)" in text and "(ppl)" in text
    png = result.folder / "report_files" / "cost-vs-quality.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.report.with_suffix(".html").read_text().count("data:image/png;base64,") == 1
    summary = json.loads((result.folder / "auto.json").read_text())
    assert summary["winner"] == winner and summary["verified"]["meets"]


def test_the_input_is_measured_once_for_every_candidate(searches):
    # Every candidate's first stage records the search's own measurement of the input.
    result = searches["nonzero=0.5"]
    original = json.loads((result.folder / "original.json").read_text())["metrics"]
    for round_outcomes in result.rounds:
        for outcome in round_outcomes:
            run = result.folder / "candidates" / outcome["candidate"]
            first = next(iter(yaml.safe_load((run / "recipe.yaml").read_text())["stages"]))
            record = json.loads((run / first / "llmopt.json").read_text())
            assert record["metrics"]["before"] == original


def test_only_the_winner_keeps_its_run_folder_and_every_recipe_stays(searches):
    result = searches["params=0.7"]
    left = sorted(p.name for p in (result.folder / "candidates").iterdir())
    assert left == [result.winner["candidate"]]
    screened = {o["candidate"] for o in result.rounds[0]}
    assert len(screened) > 1
    recipes = {p.name.split("-r")[0] for p in (result.folder / "recipes").glob("*.yaml")}
    assert screened <= recipes
    kept = searches["nonzero=0.5"]  # --keep-candidates
    names = {p.name for p in (kept.folder / "candidates").iterdir()}
    assert names >= {o["candidate"] for o in kept.rounds[0]}


def test_a_finished_search_run_again_does_no_candidate_twice(searches):
    result = searches["params=0.7"]
    events = (result.folder / "events.jsonl").read_text().splitlines()
    again = run_search("tiny-llama", result.folder, "params=0.7")
    assert (result.folder / "events.jsonl").read_text().splitlines() == events
    assert again.winner == result.winner
    assert _weight_files(again.model) == _weight_files(result.model)


def _fake_latency(original, candidate) -> float:
    """A deterministic stand-in for the timing (speed is measured in benchmarks, not tests):
    a fixed cost plus a cost per layer."""
    layers = candidate.config.num_hidden_layers / original.config.num_hidden_layers
    return 0.3 + 0.7 * layers


def test_the_verb_searches_under_a_latency_budget_and_prints_the_winner(cli, tmp_path, monkeypatch):
    from llmopt.auto import latency

    from .conftest import fast_flags

    monkeypatch.setattr(latency, "latency_ratio", _fake_latency)
    folder = tmp_path / "search"
    result = cli("auto", "tiny-llama", "--budget", "latency=0.7", "-o", folder, *fast_flags())
    assert result.code == 0, result.err
    assert "winner" in result.out and "of the input's (budget latency=0.7)" in result.out
    summary = json.loads((folder / "auto.json").read_text())
    returned = load_model(folder / "model")
    assert summary["verified"]["cost"] == _fake_latency(load_model("tiny-llama"), returned)
    assert summary["verified"]["cost"] <= 0.7
    for round_outcomes in summary["rounds"]:
        for outcome in round_outcomes:
            assert outcome["label"].startswith("slim")  # nothing else cuts latency on a CPU


def test_a_pareto_search_aims_below_the_budget_too(tmp_path):
    import optuna

    folder = tmp_path / "search"
    result = run_search("tiny-llama", folder, "nonzero=0.6", pareto=True, trials=6)
    study = optuna.load_study(study_name="screen", storage=f"sqlite:///{folder / 'search.db'}")
    assert len(study.directions) == 2  # the proxy and the cost
    screened = [t for t in study.trials if "outcome" in t.user_attrs]
    assert min(t.params["target"] for t in screened) < 1.0
    for trial in screened:
        assert trial.user_attrs["candidate"]["predicted"] <= 0.6 * trial.params["target"]
    assert result.verified["meets"]
    assert result.winner == min(result.rounds[-1], key=lambda o: (o["perplexity"], o["kl"]))
    assert "Pareto front" in result.report.read_text()


def test_the_best_anchors_are_tried_again_with_reconstruction(tmp_path):
    result = run_search("tiny-llama", tmp_path / "search", "nonzero=0.6", trials=8)
    labels = [o["label"] for o in result.rounds[0]]
    anchors = [o for o in result.rounds[0] if "reconstruct" not in o["label"]]
    ranked = sorted((o for o in anchors if o["feasible"]), key=lambda o: o["kl"])
    for best in ranked[:2]:
        assert best["label"] + " + reconstruct" in labels
