"""`run_recipe(input_measurement=...)`: a search measures its input once, not per candidate."""

from __future__ import annotations

import yaml

from llmopt.pipeline.run import run_recipe
from llmopt.stage import MeasureSettings

EVAL = {"max_tokens": 128, "seq_len": 64, "speed": False, "sample": False}
RECIPE = {
    "model": "tiny-llama",
    "defaults": {"eval": EVAL, "progress": False},
    "stages": {"shared": {"stage": "share", "unique_layers": 2}},
}


def _count_measurements(monkeypatch) -> list[int]:
    import llmopt.pipeline.runner as runner

    calls = [0]
    measure = runner.evaluate_model

    def counted(*args, **kwargs):
        calls[0] += 1
        return measure(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_model", counted)
    return calls


def test_a_given_input_measurement_is_used_instead_of_measuring_again(tmp_path, monkeypatch):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    calls = _count_measurements(monkeypatch)
    plain = run_recipe(path, tmp_path / "plain", report=False, say=lambda _: None)
    assert calls[0] == 2  # the input, then the output
    before = plain.stages[0].record["metrics"]["before"]
    given = {**before, "perplexity": 1234.5}  # marked, to see which one the record holds
    reused = run_recipe(path, tmp_path / "reused", report=False, say=lambda _: None,
                        input_measurement=(MeasureSettings(**EVAL), given))  # fmt: skip
    assert calls[0] == 3  # only the output
    assert reused.stages[0].record["metrics"]["before"]["perplexity"] == 1234.5


def test_a_measurement_under_other_settings_is_not_used(tmp_path, monkeypatch):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    calls = _count_measurements(monkeypatch)
    other = MeasureSettings(**{**EVAL, "max_tokens": 256})
    run_recipe(path, tmp_path / "run", report=False, say=lambda _: None,
               input_measurement=(other, {"perplexity": 1.0}))  # fmt: skip
    assert calls[0] == 2
