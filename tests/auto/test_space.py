"""The search space: candidates aimed just under the budget, single-technique anchors, no
compression for nothing, and size predictions that match the measured checkpoints."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from llmopt.auto.budget import parse_budget
from llmopt.auto.latency import LatencyModel
from llmopt.auto.sizing import Sizer
from llmopt.auto.space import MARGIN, Space
from llmopt.auto.structure import slim_keys, slim_shape
from llmopt.models import resolve_model
from llmopt.slim.check import requested_shape
from llmopt.slim.config import SlimConfig


def _config(name: str):
    return AutoConfig.from_pretrained(resolve_model(name))


def _original(name: str) -> dict:
    """Counts of a dense float32 zoo model, as its measurement would give them."""
    from llmopt.evaluate.footprint import checkpoint_bytes
    from llmopt.slim.shape import ParamCounter

    total = ParamCounter(_config(name)).total
    return {"unique_params": total, "nonzero_params": total,
            **checkpoint_bytes(resolve_model(name))}  # fmt: skip


def _space(name: str, budget: str, pareto: bool = False) -> Space:
    config = _config(name)
    return Space(parse_budget(budget), Sizer(config, _original(name)), config, pareto,
                 LatencyModel())  # fmt: skip


def _sample(space: Space, trials: int = 80) -> list:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(trials):
        trial = study.ask()
        candidate = space.suggest(trial)
        study.tell(trial, 0.0)
        if candidate is not None:
            out.append(candidate)
    return out


BUDGETS = ["params=0.6", "nonzero=0.5", "bytes=0.4", "latency=0.7"]


@pytest.mark.parametrize("model", ["tiny-llama", "smollm2-135m"])
@pytest.mark.parametrize("budget", BUDGETS)
def test_every_candidate_is_aimed_under_its_budget(model, budget):
    space = _space(model, budget)
    candidates = _sample(space)
    assert len({c.id for c in candidates}) >= 5
    limit = space.budget.fraction - MARGIN[space.budget.kind]
    for candidate in candidates:
        assert 0 < candidate.predicted <= limit + 1e-9, candidate.label


def test_pareto_candidates_spread_below_the_budget():
    space = _space("smollm2-135m", "nonzero=0.5", pareto=True)
    predicted = [c.predicted for c in _sample(space, 120)]
    assert max(predicted) <= 0.5 and min(predicted) < 0.35


def test_unstructured_pruning_lands_on_the_budget():
    space = _space("smollm2-135m", "nonzero=0.5")
    for method in ("wanda", "sparsegpt"):
        decisions = {"structure": "none", "prune": method, "pattern": "unstructured", "owl": False}
        candidate = space.build(decisions)
        assert candidate.predicted == pytest.approx(0.5 - MARGIN["nonzero"], abs=1e-4)
        # embeddings (21% of smollm2) are not pruned: the linears carry all of it
        assert candidate.stages[0]["sparsity"] == pytest.approx(0.6373, abs=2e-3)


@pytest.mark.parametrize("model", ["tiny-llama", "smollm2-135m"])
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("attention", ["keep", "kv_group", "head"])
def test_slim_keys_ask_for_the_shape_that_was_counted(model, depth, attention):
    config = _config(model)
    sizer = Sizer(config, _original(model))
    step = 16 if model == "tiny-llama" else 64
    for keep in (0.5, 0.6, 0.8):
        shape = slim_shape(sizer.counter, keep, depth, attention, step)
        if shape is None:
            continue
        assert sizer.params(shape) <= keep * sizer.counter.total
        keys = {k: v for k, v in slim_keys(sizer.original_shape, shape, step).items()
                if k != "stage"}  # fmt: skip
        assert requested_shape(config, SlimConfig(**keys)) == shape


def test_the_anchors_are_the_single_technique_candidates():
    labels = [_space("smollm2-135m", "nonzero=0.5").build(a).label
              for a in _space("smollm2-135m", "nonzero=0.5").anchors()]  # fmt: skip
    assert labels[0].startswith("wanda 0.63") and labels[1].startswith("sparsegpt 0.63")
    assert labels[2].startswith("slim ffn-") and labels[3].startswith("slim layers-")
    assert labels[4].startswith("share K=") and len(labels) == 5


def test_no_candidate_adds_compression_the_budget_does_not_need():
    # 4-bit GPTQ alone meets bytes=0.4 on smollm2: nothing may be added to it; 8-bit alone
    # does not, so 8-bit candidates must add something.
    space = _space("smollm2-135m", "bytes=0.4")
    for candidate in _sample(space, 200):
        # and the quantize stage refuses shared layers: no candidate asks for both
        assert not (candidate.quantize and candidate.stages[:1]
                    and candidate.stages[0]["stage"] == "share")  # fmt: skip
        if candidate.quantize and candidate.quantize["bits"] == 4:
            assert candidate.stages == () and "embeddings" not in candidate.quantize
        if candidate.quantize and candidate.quantize["bits"] == 8:
            assert candidate.stages != () or candidate.quantize.get("embeddings")


PREDICTED = [
    ("params=0.7", {"structure": "slim", "slim_depth": 0.5, "slim_attention": "kv_group"}, 1e-6),
    ("params=0.7", {"structure": "share", "share_strategy": "cycle", "share_init": "average"},
     1e-6),
    ("nonzero=0.5", {"structure": "none", "prune": "wanda", "pattern": "unstructured",
                     "owl": True}, 0.005),
    ("nonzero=0.5", {"structure": "slim", "slim_depth": 0.0, "slim_attention": "keep",
                     "prune": "sparsegpt", "pattern": "unstructured", "owl": False,
                     "split": 0.5}, 0.005),
    ("nonzero=0.5", {"structure": "none", "prune": "wanda", "pattern": "unstructured",
                     "owl": False, "reconstruct": True}, 0.005),
    ("bytes=0.4", {"structure": "none", "prune": "wanda", "pattern": "2:4", "bits": 4,
                   "quant_embeddings": False}, 0.02),
    ("bytes=0.4", {"structure": "slim", "slim_depth": 1.0, "slim_attention": "keep",
                   "prune": "none", "bits": 8, "quant_embeddings": False}, 0.02),
]  # fmt: skip
"""(budget, decisions, tolerance): parameters are counted exactly (the prediction is rounded
to 6 decimals); sparsity rounds per row;
tiny-llama's file headers are a percent of its bytes."""


@pytest.mark.slow
@pytest.mark.parametrize(("budget", "decisions", "tolerance"), PREDICTED)
def test_predicted_costs_match_the_measured_checkpoints(tmp_path, budget, decisions, tolerance):
    import yaml

    from llmopt.auto.config import AutoConfig
    from llmopt.auto.recipes import RecipeSettings, candidate_recipe
    from llmopt.pipeline.run import run_recipe

    from .conftest import FAST

    space = _space("tiny-llama", budget)
    candidate = space.build(decisions)
    settings = RecipeSettings.create("tiny-llama", AutoConfig(**FAST), 64)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(candidate_recipe(candidate, settings, 0), sort_keys=False))
    result = run_recipe(path, tmp_path / "run", report=False, say=lambda _: None)
    after = result.stages[-1].record["metrics"]["after"]
    measured = space.budget.ratio(after, space.sizer.original)
    assert measured == pytest.approx(candidate.predicted, abs=tolerance)
    # a reconstruction keeps what the stages before it removed
    assert [s.name for s in result.stages][-1:] == (
        ["reconstruct"] if decisions.get("reconstruct") else [result.stages[-1].name]
    )


def test_reconstruction_is_a_choice_after_compression_and_never_alone():
    candidates = _sample(_space("smollm2-135m", "nonzero=0.5"), 120)
    rebuilt = [c for c in candidates if c.stages and c.stages[-1]["stage"] == "reconstruct"]
    assert rebuilt and len(rebuilt) < len(candidates)
    for candidate in rebuilt:
        assert len(candidate.stages) >= 2 and candidate.stages[-1]["teacher"] == "@input"
        assert candidate.label.endswith("+ reconstruct")
