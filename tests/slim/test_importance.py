"""Importance scores: direct formulas, and planted unimportant channels, heads and layers found."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmopt.models.arch import ArchAdapter, get_path, weight_out_in
from llmopt.slim.importance import Importance, block_scores, head_output_norm_sum, influence_sum
from llmopt.slim.plan import keep_heads, plan_for, top_indices
from llmopt.slim.probes import probe_batches, skip_losses, taylor_scores
from llmopt.slim.shape import Shape, shape_of

WEAK = 0.01  # planted parts are scaled down by this


def test_head_output_norms_match_direct_computation():
    gen = torch.Generator().manual_seed(0)
    heads, size, hidden = 3, 4, 10
    x = torch.randn(2, 5, heads * size, generator=gen)
    w = torch.randn(hidden, heads * size, generator=gen)
    direct = torch.zeros(heads)
    for h in range(heads):
        part = x[..., h * size : (h + 1) * size] @ w[:, h * size : (h + 1) * size].T
        direct[h] = part.norm(dim=-1).sum()
    assert torch.allclose(head_output_norm_sum(x, w, heads), direct, rtol=1e-4)


def test_influence_is_one_minus_cosine():
    a = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    b = torch.tensor([[[0.0, 2.0], [2.0, 2.0]]])
    assert float(influence_sum(a, b)) == pytest.approx(1.0 + 0.0)


def test_top_indices_keeps_the_highest_in_order_and_breaks_ties_to_the_earlier():
    assert top_indices(torch.tensor([0.5, 3.0, 1.0, 3.0]), 2).tolist() == [1, 3]
    assert top_indices(torch.tensor([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]


def test_keep_heads_scores_a_group_by_the_sum_of_its_heads():
    original = Shape(layers=1, ffn=8, kv_groups=3, heads_per_group=2)
    # group 0: 5+0, group 1: 2+2, group 2: 1+1 -> groups 0 and 1; in each the better head
    groups, heads = keep_heads(torch.tensor([5.0, 0.0, 2.0, 2.1, 1.0, 1.0]), original, 2, 1)
    assert groups.tolist() == [0, 1]
    assert heads.tolist() == [0, 3]


def _planted_channels(model, count: int) -> list[list[int]]:
    """Scale the inputs of `count` channels per layer (a different set each) down."""
    adapter = ArchAdapter(model)
    width = shape_of(model.config).ffn
    planted = []
    for i, block in enumerate(adapter.blocks()):
        dead = sorted({(5 * i + 11 * j) % width for j in range(count)})
        for name in adapter.spec.mlp_in:
            linear = get_path(block, name)
            if getattr(linear, "bias", None) is not None:
                # A random ReLU MLP (OPT) has channels that never fire, as unimportant as
                # the planted ones: a positive bias keeps every channel alive.
                linear.bias.data += 2.0
                linear.bias.data[dead] *= WEAK
            weight_out_in(linear)[dead] *= WEAK
        planted.append(dead)
    return planted


@pytest.mark.parametrize("metric", ["activation", "weighted", "taylor"])
def test_planted_channels_are_found(family, kit, metric):
    model = kit.make_model(family)
    planted = _planted_channels(model, 16)
    original = shape_of(model.config)
    calib = kit.random_calibration()
    if metric == "taylor":
        scores, _ = taylor_scores(model, probe_batches(calib.ids, 256), ffn=True, heads=False)
    else:
        scores = block_scores(model, calib, ffn=metric).ffn
    assert scores.shape == (original.layers, original.ffn)
    target = Shape(original.layers, original.ffn - 16, original.kv_groups, original.heads_per_group)
    plan = plan_for(original, target, Importance(ffn=scores))
    for dead, kept in zip(planted, plan.channels, strict=True):
        assert set(kept.tolist()) == set(range(original.ffn)) - set(dead)


def _weaken_heads(model, heads_per_layer: list[list[int]]) -> None:
    adapter = ArchAdapter(model)
    size = adapter.head_dim
    for block, heads in zip(adapter.blocks(), heads_per_layer, strict=True):
        out = weight_out_in(get_path(block, adapter.spec.attn_out[0]))
        for h in heads:
            out[:, h * size : (h + 1) * size] *= WEAK


@pytest.mark.parametrize("metric", ["output", "taylor"])
def test_planted_heads_and_groups_are_found(head_family, kit, metric):
    model = kit.make_model(head_family)
    original = shape_of(model.config)  # 2 groups of 2 heads
    # Layer i: group (i % 2) is weak as a whole; in the other group head (i // 2) is weak.
    weak_group = [i % 2 for i in range(original.layers)]
    weak_head = [(1 - g) * 2 + (i // 2) % 2 for i, g in enumerate(weak_group)]
    _weaken_heads(
        model, [[2 * g, 2 * g + 1, h] for g, h in zip(weak_group, weak_head, strict=True)]
    )
    calib = kit.random_calibration()
    if metric == "taylor":
        _, scores = taylor_scores(model, probe_batches(calib.ids, 256), ffn=False, heads=True)
    else:
        scores = block_scores(model, calib, heads=metric).heads
    plan = plan_for(original, Shape(original.layers, original.ffn, 1, 1), Importance(heads=scores))
    for i, (groups, heads) in enumerate(zip(plan.groups, plan.heads, strict=True)):
        kept_group = 1 - weak_group[i]
        strong_head = ({2 * kept_group, 2 * kept_group + 1} - {weak_head[i]}).pop()
        assert groups.tolist() == [kept_group]
        assert heads.tolist() == [strong_head]


def _weaken_layer(model, layer: int) -> None:
    adapter = ArchAdapter(model)
    block = adapter.blocks()[layer]
    for name in adapter.spec.attn_out + adapter.spec.mlp_out:
        linear = get_path(block, name)
        weight_out_in(linear).mul_(WEAK)
        if getattr(linear, "bias", None) is not None:
            linear.bias.data.mul_(WEAK)


def test_planted_layer_is_found_by_influence(family, kit):
    model = kit.make_model(family)
    _weaken_layer(model, 2)
    scores = block_scores(model, kit.random_calibration(), layers="influence").layers
    assert int(scores.argmin()) == 2
    assert scores.min() < 0.2 * scores.sort().values[1]


def test_planted_layer_is_found_by_the_loss_when_skipped(kit):
    model = kit.make_model("llama")
    _weaken_layer(model, 1)
    calib = kit.random_calibration()
    increase = skip_losses(model, shape_of(model.config), probe_batches(calib.ids, 256))
    assert int(increase.abs().argmin()) == 1


def test_taylor_scores_are_first_order_loss_changes(kit):
    """For one sequence, sum_t a*dL/da of a channel predicts the loss change of scaling it
    by (1 + eps): dL = eps * sum_t a*dL/da."""
    # float64, and the loss computed here: transformers' own loss is float32.
    model = kit.make_model("llama", layers=2).double()
    ids = kit.tokens(1, 24)
    scores, _ = taylor_scores(model, [ids], ffn=True, heads=False)
    adapter = ArchAdapter(model)
    down = get_path(adapter.blocks()[1], adapter.spec.mlp_out[0])
    channel, eps = int(scores[1].argmax()), 1e-3

    def loss(scale: float) -> float:
        def hook(_m, args):
            x = args[0].clone()
            x[..., channel] *= scale
            return (x,)

        handle = down.register_forward_pre_hook(hook)
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        handle.remove()
        return float(F.cross_entropy(logits[0, :-1], ids[0, 1:]))

    change = (loss(1 + eps) - loss(1 - eps)) / 2
    assert abs(change) == pytest.approx(eps * float(scores[1, channel]), rel=1e-3)


def test_scores_do_not_change_the_model(kit):
    model = kit.make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = kit.random_calibration()
    block_scores(model, calib, ffn="weighted", heads="output", layers="influence")
    taylor_scores(model, probe_batches(calib.ids, 64), ffn=True, heads=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_cosine_helper_agrees_with_torch():
    a, b = torch.randn(3, 7), torch.randn(3, 7)
    expected = (1 - F.cosine_similarity(a, b, dim=-1)).sum()
    assert torch.allclose(influence_sum(a, b), expected)
