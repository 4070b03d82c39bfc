"""Wanda's scores, SparseGPT's reconstruction, OWL's sparsities, on small direct cases."""

from __future__ import annotations

import pytest
import torch

from llmopt.calibrate.hessian import inverse_cholesky
from llmopt.errors import BadInput
from llmopt.prune.masks import choose_mask
from llmopt.prune.owl import owl_sparsities
from llmopt.prune.sparsegpt import sparsegpt_prune
from llmopt.prune.wanda import wanda_scores
from llmopt.sparsity import Pattern


def correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs with strongly correlated features and a few large-norm channels."""
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, features // 4, generator=gen)
    mix = torch.randn(features // 4, features, generator=gen)
    x = latent @ mix + 0.1 * torch.randn(tokens, features, generator=gen)
    x[:, :4] *= 8.0  # outlier channels, as LLM activations have
    return x


def test_wanda_scores_match_direct_computation():
    gen = torch.Generator().manual_seed(1)
    w, x = torch.randn(6, 10, generator=gen), torch.randn(100, 10, generator=gen)
    direct = torch.empty(6, 10)
    for i in range(6):
        for j in range(10):
            direct[i, j] = w[i, j].abs() * x[:, j].pow(2).sum().sqrt()
    assert torch.allclose(wanda_scores(w, x.norm(dim=0)), direct, rtol=1e-5)


@pytest.mark.parametrize("pattern", [Pattern(), Pattern(2, 4)])
def test_reconstruction_error_ordering(pattern):
    """On correlated inputs: SparseGPT < Wanda < magnitude in ||WX - W'X||."""
    x = correlated_inputs(2048, 64)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    hessian = 2 * x.T @ x / x.shape[0]

    def error(pruned: torch.Tensor) -> float:
        return float((x @ (w - pruned).T).norm())

    magnitude = w.masked_fill(choose_mask(w.abs(), 0.5, pattern, "row"), 0)
    wanda = w.masked_fill(choose_mask(wanda_scores(w, x.norm(dim=0)), 0.5, pattern, "row"), 0)
    sparse = sparsegpt_prune(w, hessian, 0.5, pattern, blocksize=16)
    assert (sparse == 0).float().mean() == pytest.approx(0.5, abs=0.02)
    assert error(sparse) < error(wanda) < error(magnitude)


def test_sparsegpt_nm_groups_and_dead_inputs():
    x = correlated_inputs(512, 32)
    x[:, 5] = 0.0  # a dead input: zero Hessian diagonal
    w = torch.randn(8, 32)
    out = sparsegpt_prune(w, 2 * x.T @ x / 512, 0.5, Pattern(2, 4), blocksize=8)
    assert bool(((out.view(8, 8, 4) == 0).sum(-1) >= 2).all())
    assert bool((out[:, 5] == 0).all())
    assert torch.isfinite(out).all()


def test_sparsegpt_keeps_segment_budgets():
    """Stacked q/k/v rows: each layer keeps its own count per column block."""
    x = correlated_inputs(512, 32)
    w = torch.cat([torch.randn(8, 32) * 10, torch.randn(4, 32) * 0.01])
    out = sparsegpt_prune(w, 2 * x.T @ x / 512, 0.5, Pattern(), segments=[8, 4], blocksize=32)
    assert int((out[:8] == 0).sum()) == 128
    assert int((out[8:] == 0).sum()) == 64


def test_inverse_cholesky_raises_damp_then_fails():
    h = torch.eye(4)
    h[0, 1] = h[1, 0] = 1.5  # indefinite, but fixed by enough dampening
    upper = inverse_cholesky(h, damp=0.01)
    assert torch.isfinite(upper).all()
    with pytest.raises(BadInput, match="--damp"):
        inverse_cholesky(-torch.eye(4), damp=0.01, where="block 0 q_proj")


def test_inverse_cholesky_is_the_upper_factor_of_the_damped_inverse():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 40, generator=gen, dtype=torch.float64)
    h = 2 * x.T @ x / 300
    upper = inverse_cholesky(h, damp=0.01)
    damped = h + 0.01 * h.diagonal().mean() * torch.eye(40, dtype=torch.float64)
    assert torch.equal(upper, upper.triu())
    assert (upper.diagonal() > 0).all()
    torch.testing.assert_close(upper.T @ upper, torch.linalg.inv(damped), rtol=1e-8, atol=1e-10)


def test_owl_sparsities_keep_the_average():
    ratios = [0.01, 0.05, None, 0.02, 0.03]
    out = owl_sparsities(ratios, 0.5, lam=0.08)
    measured = [s for s, r in zip(out, ratios, strict=True) if r is not None]
    assert sum(measured) / 4 == pytest.approx(0.5)
    assert out[2] == 0.5
    assert out[1] == min(out) and out[0] == max(out)  # most outliers -> least pruned
    assert max(measured) - min(measured) == pytest.approx(0.16)


@pytest.mark.parametrize(
    "family,method", [("tiny-gpt2", "sparsegpt"), ("tiny-neox", "sparsegpt"), ("tiny-opt", "wanda")]
)
def test_data_aware_methods_on_every_family(family, method, tiny_tokenizer):
    """2:4 holds in every linear, including GPT-2's transposed Conv1D and fused qkv."""
    from llmopt import load_model
    from llmopt.models.arch import ArchAdapter, weight_out_in
    from llmopt.prune import PruneConfig, prune_model

    model = load_model(family)
    config = PruneConfig(method=method, pattern="2:4", calib_samples=4, calib_seq_len=32)
    result = prune_model(model, tiny_tokenizer, config, progress=False)
    assert result.sparsity == 0.5
    for module in ArchAdapter(model).all_linears().values():
        w = weight_out_in(module)
        assert bool(((w.reshape(w.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def test_sparsegpt_nm_with_a_blocksize_that_m_does_not_divide():
    x = correlated_inputs(256, 30)
    out = sparsegpt_prune(torch.randn(4, 30), 2 * x.T @ x / 256, 0.4, Pattern(2, 5), blocksize=8)
    assert bool(((out.view(4, 6, 5) == 0).sum(-1) >= 2).all())
