"""fp32 products through oneDNN: the same values and gradients as PyTorch's, in fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmopt.train import onednn

pytestmark = pytest.mark.skipif(not onednn._onednn_available(), reason="this PyTorch has no oneDNN")


def _rel_err(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).norm() / exact.norm())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5, 48), (7, 48), (48,), (0, 48)])
def test_linear_matches_torch_values_and_gradients(shape, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen, requires_grad=True)
    w = torch.randn(40, 48, generator=gen, requires_grad=True)
    b = torch.randn(40, generator=gen, requires_grad=True) if bias else None
    grad = torch.randn(*shape[:-1], 40, generator=gen)
    want = F.linear(x, w, b)
    want_grads = torch.autograd.grad(want, [t for t in (x, w, b) if t is not None], grad)
    got = onednn.linear(x, w, b)
    got_grads = torch.autograd.grad(got, [t for t in (x, w, b) if t is not None], grad)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for have, ref in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(have, ref, rtol=1e-5, atol=1e-5)


def test_fp32_accuracy_is_that_of_torch():
    """Against a float64 product, oneDNN's fp32 error is of the order of PyTorch's own
    (a reduced-precision product, e.g. bf16 inside, would be ~1e-3)."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(256, 576, generator=gen), torch.randn(1536, 576, generator=gen)
    exact = x.double() @ w.double().T
    ours, theirs = _rel_err(onednn.linear(x, w), exact), _rel_err(F.linear(x, w), exact)
    assert ours < 1e-6
    assert ours < 10 * theirs + 1e-7


def test_frozen_weight_and_input_without_grad():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 16, generator=gen)
    w = torch.randn(8, 16, generator=gen, requires_grad=True)
    onednn.linear(x, w).sum().backward()  # x needs no gradient
    torch.testing.assert_close(w.grad, torch.ones(4, 8).T @ x, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    w.requires_grad_(False)
    onednn.linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(4, 8) @ w, rtol=1e-5, atol=1e-5)


def test_non_contiguous_input():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 6, generator=gen).T.requires_grad_(True)  # [6, 16], strided
    w = torch.randn(8, 16, generator=gen)
    torch.testing.assert_close(onednn.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
    onednn.linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(6, 8) @ w, rtol=1e-5, atol=1e-5)


def test_context_routes_linear_and_2d_products(monkeypatch):
    calls = []
    real = onednn._product

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(onednn, "_product", counted)
    gen = torch.Generator().manual_seed(4)
    x, w = torch.randn(5, 12, generator=gen), torch.randn(7, 12, generator=gen)
    m = torch.randn(12, 3, generator=gen)
    with onednn.fp32_products():
        got = [F.linear(x, w), x @ m, torch.matmul(x, m), torch.mm(x, m), x.mm(m)]
    assert len(calls) == 5
    want = [F.linear(x, w), x @ m, x @ m, x @ m, x @ m]
    for have, ref in zip(got, want, strict=True):
        torch.testing.assert_close(have, ref, rtol=1e-5, atol=1e-5)


def test_context_leaves_other_products_alone(monkeypatch):
    """bf16, autocast, batched operands and the disabled context use PyTorch's kernels."""
    monkeypatch.setattr(onednn, "_product", lambda *a: pytest.fail("oneDNN path taken"))
    x, w = torch.randn(5, 12), torch.randn(7, 12)
    with onednn.fp32_products():
        F.linear(x.bfloat16(), w.bfloat16())
        torch.randn(2, 5, 12) @ torch.randn(2, 12, 3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            F.linear(x, w)
    with onednn.fp32_products(enabled=False):
        F.linear(x, w)


def test_override_and_rule(monkeypatch):
    onednn.fp32_products_reason.cache_clear()
    try:
        monkeypatch.setenv(onednn.ENV, "aten")
        assert onednn.fp32_products_reason() is None
        onednn.fp32_products_reason.cache_clear()
        monkeypatch.setenv(onednn.ENV, "onednn")
        assert "onednn" in onednn.fp32_products_reason()
        onednn.fp32_products_reason.cache_clear()
        monkeypatch.delenv(onednn.ENV)
        monkeypatch.setattr(onednn, "_cpu_info", lambda: ("GenuineIntel", {"avx512f"}))
        assert onednn.fp32_products_reason() is None
        onednn.fp32_products_reason.cache_clear()
        monkeypatch.setattr(onednn, "_cpu_info", lambda: ("AuthenticAMD", {"avx512f"}))
        assert "AMD" in onednn.fp32_products_reason()
    finally:
        onednn.fp32_products_reason.cache_clear()


def test_training_curve_matches_torch_kernels(tiny_llama_dir, packed_source, monkeypatch):
    """The trainer in fp32 with oneDNN products on and off: the same loss curve and weights."""
    from llmopt import load_model
    from llmopt.train import TrainConfig, precision, run_training

    def run(on: bool):
        monkeypatch.setattr(precision, "_uses_onednn", lambda device: on)
        config = TrainConfig(steps=4, micro_batch_size=2, grad_accum=2, seq_len=32, lr=1e-3,
                             warmup=0, precision="fp32", progress=False, log_every=1)  # fmt: skip
        return run_training(load_model(tiny_llama_dir), config, packed_source())

    plain, fast = run(False), run(True)
    for a, b in zip(plain.history, fast.history, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    for (name, p), q in zip(plain.model.named_parameters(), fast.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
