"""Recipes: validated whole before anything runs; every message names file, line, stage, key."""

from __future__ import annotations

import pytest

from llmopt.errors import BadInput
from llmopt.pipeline.recipe import load_recipe
from llmopt.recipes import shipped

GOOD = {
    "model": "tiny-llama",
    "defaults": {"eval": {"max_tokens": 256}, "calib_samples": 4},
    "stages": {
        "pruned": {"stage": "prune", "method": "wanda", "sparsity": 0.5},
        "kd": {"stage": "distill", "teacher": "@input", "steps": 2, "keep_masks": True},
    },
}


def test_shipped_recipes_all_validate():
    recipes = shipped()
    assert {"demo", "demo-full"} <= set(recipes)
    assert len(recipes) >= 4, recipes
    for name, path in recipes.items():
        recipe = load_recipe(path)
        assert recipe.stages, name
        kinds = {s.kind for s in recipe.stages}
        assert kinds, name


def test_defaults_references_and_sets(write_recipe):
    recipe = load_recipe(write_recipe(GOOD), sets=["kd.steps=5", "pruned.eval.seq_len=64"])
    pruned, kd = recipe.stages
    assert pruned.config.calib_samples == 4 and pruned.config.eval.max_tokens == 256
    assert pruned.config.eval.seq_len == 64 and kd.config.eval.seq_len is None
    assert kd.config.steps == 5 and kd.model == "@pruned"
    assert kd.references == {"teacher": "@input"}
    assert recipe.raw["stages"]["kd"]["steps"] == 5  # the effective recipe keeps the override


@pytest.mark.parametrize(
    ("change", "line_key", "needles"),
    [
        (lambda r: r["stages"]["pruned"].update(sparsty=0.5), "sparsty",
         ["'pruned'", "unknown key 'sparsty'", "did you mean 'sparsity'"]),
        (lambda r: r["stages"]["pruned"].update(sparsity=1.5), "sparsity",
         ["'pruned'", "sparsity=1.5"]),
        (lambda r: r["stages"]["kd"].update(stage="distil"), "stage: distil",
         ["'kd'", "did you mean 'distill'"]),
        (lambda r: r["stages"]["kd"].update(teacher="@kd2"), "teacher",
         ["'kd'", "teacher", "@kd2", "no earlier stage"]),
        (lambda r: r["stages"]["pruned"].update(model="@kd"), "model",
         ["'pruned'", "model", "no earlier stage"]),
        (lambda r: r.update(stagez={}), "stagez", ["unknown key 'stagez'"]),
        (lambda r: r["defaults"].update(calib_sample=4), "calib_sample",
         ["defaults", "calib_sample", "did you mean 'calib_samples'"]),
        (lambda r: r.pop("model"), None, ["'model'", "required"]),
    ],
)  # fmt: skip
def test_a_bad_recipe_names_file_line_stage_and_key(write_recipe, change, line_key, needles):
    import copy
    import re

    data = copy.deepcopy(GOOD)
    change(data)
    path = write_recipe(data)
    with pytest.raises(BadInput) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)
    if line_key is not None:  # the line named is the one holding the bad key
        line = int(re.match(rf"{re.escape(str(path))}:(\d+):", message).group(1))
        assert line_key in path.read_text().splitlines()[line - 1], message


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["nostage.steps=1"], "no stage 'nostage'"),
        (["kd"], "expected NAME.key=value"),
        (["kd.steps=abc"], "steps='abc'"),
    ],
)
def test_bad_set_is_named(write_recipe, sets, needle):
    with pytest.raises(BadInput, match=needle):
        load_recipe(write_recipe(GOOD), sets=sets)


def test_bad_recipe_from_the_cli_runs_nothing(cli, write_recipe, tmp_path):
    data = {**GOOD, "stages": {**GOOD["stages"], "kd": {**GOOD["stages"]["kd"], "alpha": 2}}}
    r = cli("run", write_recipe(data), "-o", tmp_path / "run")
    assert r.code == 2 and "'kd'" in r.err and "alpha=2" in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bad_data_of_a_later_stage_is_refused_before_the_first_runs(write_recipe, tmp_path):
    import copy

    from llmopt.pipeline.run import run_recipe

    data = copy.deepcopy(GOOD)
    data["stages"]["kd"]["data"] = str(tmp_path / "nope.txt")
    with pytest.raises(BadInput, match=r"nope\.txt"):
        run_recipe(write_recipe(data), tmp_path / "run", say=lambda _: None)
    assert not (tmp_path / "run" / "pruned").exists()
