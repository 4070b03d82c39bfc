"""fp32 matrix products through oneDNN on CPUs where PyTorch's default kernels are slow.

Why: PyTorch multiplies fp32 matrices on the CPU with MKL, and MKL takes its
AVX-512 kernels only on Intel processors. On an AMD processor with AVX-512
(Zen 4, Zen 5) it runs its AVX2 kernels, about half of what the core can do.
oneDNN, which PyTorch ships as well (and already uses for bf16 products),
chooses its kernels by the CPU's features, so on such a CPU it runs the same
fp32 products about twice as fast. The arithmetic stays fp32: the error
against a float64 product is of the same order for both libraries (tested in
tests/train/test_onednn.py; measured in benchmarks/train_throughput.py).

How: inside `fp32_products()`, `F.linear` and 2-D `matmul`/`mm`/`@` on plain
fp32 CPU tensors run as oneDNN products, with a backward that computes the
input and weight gradients as oneDNN products too. Anything
else (autocast on, another dtype or device, a sharded DTensor, batched
operands) falls through unchanged. Outside the context nothing changes.

`fp32_products_reason()` is the one place that decides where this is used: a
fixed rule on the CPU's vendor and features, never a timing, so that two
runs on one machine (a run and its resumption) always use the same kernels.
`LLMOPT_FP32_MATMUL=aten|onednn` overrides the rule (for A/B measurements).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

ENV = "LLMOPT_FP32_MATMUL"


def _cpu_info() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo") as handle:
            vendor, flags = "", set()
            for line in handle:
                if line.startswith("vendor_id") and not vendor:
                    vendor = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
            return vendor, flags
    except OSError:
        return "", set()


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def fp32_products_reason() -> str | None:
    """Why fp32 products on this CPU go through oneDNN, or None when they keep PyTorch's.

    oneDNN is chosen on an AMD CPU with AVX-512 (where MKL falls back to AVX2),
    unless `LLMOPT_FP32_MATMUL` says otherwise ('aten': never, 'onednn': always,
    where PyTorch has oneDNN).
    """
    asked = os.environ.get(ENV, "").strip().lower()
    if asked == "aten" or not _onednn_available():
        return None
    if asked == "onednn":
        return f"{ENV}=onednn"
    vendor, flags = _cpu_info()
    if vendor == "AuthenticAMD" and "avx512f" in flags:
        return "AMD CPU with AVX-512: MKL's fp32 kernels there are AVX2 only"
    return None


def _plain(t: torch.Tensor | None) -> bool:
    return t is None or type(t) in (torch.Tensor, nn.Parameter)


def _eligible(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and _plain(x)
        and _plain(w)
        and _plain(b)
        and x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and (b is None or (b.dtype == torch.float32 and b.dim() == 1))
        and w.dim() == 2
        and x.dim() >= 1
        and x.shape[-1] == w.shape[1]
        and not torch.is_autocast_enabled("cpu")
    )


def _product(x2: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x2 [M, K] @ w[N, K].T (+ b): one oneDNN product (w may be a transposed view)."""
    if x2.numel() == 0 or w.numel() == 0:  # oneDNN has no empty products
        return F.linear(x2, w, b)
    return torch.ops.mkldnn._linear_pointwise(x2, w, b, "none", [], "")


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    return x2 if x2.is_contiguous() else x2.contiguous()


# Custom operators rather than plain functions: torch.compile then keeps them as
# opaque kernels (inductor cannot lower oneDNN's inference-only linear itself)
# and still fuses the elementwise work around them.
@torch.library.custom_op("llmopt::onednn_mm", mutates_args=())
def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [N, K].T as one oneDNN product (either may be a transposed view)."""
    return _product(a, b, None)


@_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[0])


@torch.library.custom_op("llmopt::onednn_linear", mutates_args=())
def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, w, b) with the product computed by oneDNN."""
    return _product(_rows(x), w, b).reshape(*x.shape[:-1], w.shape[0])


@_linear.register_fake
def _(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], w.shape[0])


def _linear_setup(ctx, inputs, output) -> None:
    x, w, b = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = b is not None


def _linear_backward(ctx, grad):
    # The gradients are products too: d/dx = grad @ w, d/dw = grad.T @ x.
    x, w = ctx.saved_tensors
    want_x, want_w, want_b = ctx.needs_input_grad
    g2 = _rows(grad)
    grad_x = _mm(g2, w.t()).reshape(x.shape) if want_x else None
    grad_w = _mm(g2.t(), x.reshape(g2.shape[0], x.shape[-1]).t()) if want_w else None
    grad_b = g2.sum(0) if want_b and ctx.has_bias else None
    return grad_x, grad_w, grad_b


_linear.register_autograd(_linear_backward, setup_context=_linear_setup)


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, w, b)` as oneDNN products when the operands allow it (see module doc)."""
    if not _eligible(x, w, b):
        return F.linear(x, w, b)
    return _linear(x, w, b)


_MATMULS = {torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}
_MMS = {torch.mm, torch.Tensor.mm}


class _Fp32Products(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return linear(*args, **kwargs)
        if (func in _MATMULS or func in _MMS) and len(args) == 2 and not kwargs:
            a, m = args
            square = func not in _MMS or (a.dim() == 2 and m.dim() == 2)
            if square and isinstance(m, torch.Tensor) and m.dim() == 2:
                return linear(a, m.t())
        return func(*args, **kwargs)


@contextlib.contextmanager
def fp32_products(enabled: bool = True) -> Iterator[None]:
    """Inside: fp32 CPU linears and 2-D products run through oneDNN (a no-op when not enabled)."""
    if not enabled:
        yield
        return
    with _Fp32Products():
        yield
