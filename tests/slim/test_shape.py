"""Shapes: exact parameter counts, the widest MLP in a budget, the --params candidates."""

from __future__ import annotations

import pytest
import torch

from llmopt.evaluate import model_footprint
from llmopt.models.zoo import tiny_config
from llmopt.slim.candidates import candidate_shapes
from llmopt.slim.importance import Importance
from llmopt.slim.plan import plan_for
from llmopt.slim.shape import ParamCounter, Shape, shape_of
from llmopt.slim.surgery import build_slim_model


def _scores(shape: Shape) -> Importance:
    gen = torch.Generator().manual_seed(0)
    return Importance(
        ffn=torch.rand(shape.layers, shape.ffn, generator=gen),
        heads=torch.rand(shape.layers, shape.heads, generator=gen),
        layers=torch.rand(shape.layers, generator=gen),
    )


def test_counts_equal_the_built_models(family, kit):
    model = kit.make_model(family)
    counter = ParamCounter(model.config)
    original = counter.original
    assert counter.total == model_footprint(model).unique_params
    narrower = Shape(2, 48, original.kv_groups, original.heads_per_group)
    shapes = [narrower]
    if family in ("llama", "qwen2", "mistral"):
        shapes.append(Shape(3, 80, 1, 1))
    for shape in shapes:
        slim = build_slim_model(model, plan_for(original, shape, _scores(original)))
        assert counter.count(shape) == model_footprint(slim).unique_params


def test_widest_ffn_is_the_largest_that_fits():
    counter = ParamCounter(tiny_config("llama"))
    o = counter.original
    budget = 0.8 * counter.total
    width = counter.widest_ffn(3, o.kv_groups, o.heads_per_group, budget)
    assert 0 < width <= o.ffn
    fits = counter.count(Shape(3, width, o.kv_groups, o.heads_per_group))
    assert fits <= budget
    if width < o.ffn:
        assert counter.count(Shape(3, width + 1, o.kv_groups, o.heads_per_group)) > budget


@pytest.mark.parametrize("keep", [0.55, 0.8])
def test_candidates_fit_the_budget_and_span_depth_and_width(keep):
    config = tiny_config("llama", layers=8)
    counter = ParamCounter(config)
    original = counter.original
    shapes = candidate_shapes(config, keep, 16, 4, counter)
    assert len(shapes) == len(set(shapes)) >= 4
    assert all(counter.count(s) <= keep * counter.total for s in shapes)
    assert all(s.ffn % 16 == 0 or s.ffn == original.ffn for s in shapes)
    # the layers-only cut (every width whole) and a cut of widths only
    assert any(s.ffn == original.ffn and s.heads == original.heads for s in shapes)
    assert any(s.layers == original.layers for s in shapes)
    assert any(s.kv_groups < original.kv_groups for s in shapes)


def test_candidates_without_head_cuts_where_the_family_cannot_express_them():
    config = tiny_config("gpt2", layers=8)
    shapes = candidate_shapes(config, 0.7, 16, 3)
    assert shapes and all(s.heads == shape_of(config).heads for s in shapes)


def test_an_unreachable_budget_has_no_candidates():
    assert candidate_shapes(tiny_config("llama"), 0.05, 16, 4) == []
