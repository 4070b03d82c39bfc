"""The grid: RTN error within half a step, exact zeros, float16 scales, packing; GPTQ vs RTN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmopt.quantize.gptq import JointSparsity, gptq_quantize
from llmopt.quantize.grid import (
    GridSpec,
    codes_of,
    expand_groups,
    pack_codes,
    packed_size,
    quantize_weight,
    unpack_codes,
)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [None, 16])
def test_rtn_error_is_at_most_half_a_step_per_group(bits, symmetric, group):
    torch.manual_seed(0)
    w = torch.randn(24, 64) * torch.linspace(0.01, 3.0, 24).unsqueeze(1)
    w[3, 5] = 40.0  # an outlier widens only its own group
    spec = GridSpec(bits, group, symmetric)
    deq, scale, zero = quantize_weight(w, spec)
    step = expand_groups(scale, 64)
    err = (deq - w).abs()
    assert bool((err <= step / 2 * (1 + 1e-6)).all())
    # scales are float16 values and zero points integers on the grid
    assert torch.equal(scale.half().float(), scale)
    assert torch.equal(zero.round(), zero) and zero.min() >= 0 and zero.max() <= spec.maxq
    # the outlier's group has a larger step than the others of its row
    if group is not None:
        assert scale[3, 0] > 5 * scale[3, 1]


def test_zeros_stay_exact_and_codes_are_recovered():
    torch.manual_seed(1)
    w = torch.randn(8, 32)
    w[w.abs() < 0.5] = 0.0
    for symmetric in (True, False):
        spec = GridSpec(4, 16, symmetric)
        deq, scale, zero = quantize_weight(w, spec)
        assert bool((deq[w == 0] == 0).all())
        codes = codes_of(deq, scale, zero, spec.maxq)
        assert codes is not None and codes.dtype == torch.uint8
        assert codes_of(deq + 1e-3, scale, zero, spec.maxq) is None  # off the grid


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_roundtrip(bits):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << bits, size=101, dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert packed.size == packed_size(101, bits) == (101 if bits == 8 else 51)
    assert np.array_equal(unpack_codes(packed, bits, 101), codes)


def _correlated(n: int, features: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 8, generator=g)
    mix = torch.randn(8, features, generator=g)
    return base @ mix + 0.05 * torch.randn(n, features, generator=g)


def _output_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (w - q).T) ** 2).sum())


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_correlated_inputs(act_order):
    x = _correlated(2048, 64)
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2))
    hessian = 2 * x.T @ x / x.shape[0]
    spec = GridSpec(4, 16, True)
    rtn, _, _ = quantize_weight(w, spec)
    result = gptq_quantize(w, hessian, spec, act_order=act_order)
    assert _output_error(w, result.weight, x) < 0.5 * _output_error(w, rtn, x)
    # GPTQ's output lies on the grid it reports
    assert codes_of(result.weight, result.scale, result.zero, spec.maxq) is not None


def test_gptq_keeps_existing_zeros_and_reaches_joint_patterns():
    x = _correlated(1024, 64, seed=3)
    hessian = 2 * x.T @ x / x.shape[0]
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(4))
    w[:, ::3] = 0.0
    kept = gptq_quantize(w, hessian, GridSpec(4, 32, False))
    assert bool((kept.weight[:, ::3] == 0).all())
    nm = gptq_quantize(w, hessian, GridSpec(4, 32, True), joint=JointSparsity(0.5, 2, 4))
    zeros_per_group = (nm.weight.view(16, 16, 4) == 0).sum(-1)
    assert bool((zeros_per_group >= 2).all())
    segments = [8, 8]
    dense = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    half = gptq_quantize(
        dense, hessian, GridSpec(8, None, True), JointSparsity(0.5), segments=segments
    )
    for part in half.weight.split(segments):
        # exactly half pruned per stacked layer; a kept weight may also round to zero
        zeros = int((part == 0).sum())
        assert part.numel() // 2 <= zeros <= part.numel() // 2 + part.numel() // 100
