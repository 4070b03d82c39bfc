"""Exact counts: magnitude in every scope, every N:M group, threshold, global ties."""

from __future__ import annotations

import pytest
import torch

from llmopt.errors import BadInput
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.prune import PruneConfig, prune_model
from llmopt.prune.masks import choose_mask, global_masks, nm_mask
from llmopt.sparsity import Pattern, parse_pattern


def zeros(t: torch.Tensor) -> int:
    return int(t.numel() - torch.count_nonzero(t))


def test_row_scope_prunes_the_same_count_in_every_row():
    scores = torch.randn(7, 50)
    mask = choose_mask(scores, 0.3, Pattern(), "row")
    assert mask.sum(1).tolist() == [15] * 7
    # the pruned are the lowest of their row
    kept_min = torch.where(mask, torch.inf, scores).min(1).values
    pruned_max = torch.where(mask, scores, -torch.inf).max(1).values
    assert bool((pruned_max <= kept_min).all())


def test_layer_scope_exact_count_with_ties():
    scores = torch.zeros(10, 10)  # all tied: the count must still be exact
    assert int(choose_mask(scores, 0.37, Pattern(), "layer").sum()) == 37


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_every_group_has_exactly_n_pruned(n, m):
    scores = torch.randn(16, 64)
    groups = nm_mask(scores, Pattern(n, m)).view(16, 64 // m, m)
    assert bool((groups.sum(-1) == n).all())


def test_global_scope_is_exact_over_all_layers():
    scores = {"a": torch.randn(8, 16), "b": torch.randn(4, 32) * 3, "c": torch.ones(5, 5)}
    masks = global_masks(scores, 0.5)
    assert sum(int(m.sum()) for m in masks.values()) == (128 + 128 + 25) // 2
    threshold = max(float(scores[k][masks[k]].max()) for k in masks if masks[k].any())
    assert all(bool((scores[k][~masks[k]] >= threshold).all()) for k in masks)


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "2-4", "dense"])
def test_bad_patterns(text):
    with pytest.raises(BadInput, match="--pattern"):
        parse_pattern(text)


def _linear_zeros(model) -> dict[str, int]:
    return {n: zeros(weight_out_in(m)) for n, m in ArchAdapter(model).all_linears().items()}


@pytest.mark.parametrize("scope", ["row", "layer", "global"])
def test_magnitude_exact_counts(tiny_llama, scope):
    adapter = ArchAdapter(tiny_llama)
    sizes = {n: weight_out_in(m).shape for n, m in adapter.all_linears().items()}
    head_before = adapter.head().weight.clone()
    prune_model(tiny_llama, None, PruneConfig(method="magnitude", sparsity=0.3, scope=scope))
    counts = _linear_zeros(tiny_llama)
    if scope == "row":
        assert counts == {n: s[0] * int(s[1] * 0.3) for n, s in sizes.items()}
    elif scope == "layer":
        assert counts == {n: int(s[0] * s[1] * 0.3) for n, s in sizes.items()}
    else:
        total = sum(s[0] * s[1] for s in sizes.values())
        assert sum(counts.values()) == int(total * 0.3)
        assert len(set(counts.values())) > 1  # global: layers differ
    assert torch.equal(adapter.head().weight, head_before)  # the head is never pruned


def test_magnitude_threshold(tiny_llama):
    linears = ArchAdapter(tiny_llama).all_linears()
    expected = sum(int((weight_out_in(m).abs() < 0.02).sum()) for m in linears.values())
    result = prune_model(tiny_llama, None, PruneConfig(method="magnitude", threshold=0.02))
    assert result.zero_weights == expected > 0


def test_magnitude_nm_and_targets(tiny_llama):
    config = PruneConfig(method="magnitude", pattern="2:4", targets=r"mlp\.", skip=r"layers\.0\.")
    result = prune_model(tiny_llama, None, config)
    assert set(result.layer_sparsity) == {
        f"model.layers.{i}.mlp.{p}_proj" for i in (1, 2, 3) for p in ("gate", "up", "down")
    }
    for name, module in ArchAdapter(tiny_llama).all_linears().items():
        w = weight_out_in(module)
        if name in result.layer_sparsity:
            assert bool(((w.view(w.shape[0], -1, 4) == 0).sum(-1) == 2).all())
        else:
            assert zeros(w) == 0
