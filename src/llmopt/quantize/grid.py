"""The integer grid of a quantized weight: scales, zero points, codes, packing.

A quantized (out, in) weight is cut into groups of `group_size` consecutive
inputs per row; each (row, group) has a scale s and a zero point z, and every
weight is `(code - z) * s` with an unsigned code in [0, 2^bits - 1].

Conventions (chosen so the same numbers serve every consumer):
- symmetric: z = 2^(bits-1) for every group (not stored) and s = absmax /
  ((2^bits - 1) / 2), the GPTQ and compressed-tensors convention;
  asymmetric: the range [min(w, 0), max(w, 0)] maps onto [0, 2^bits - 1] with
  an integer z. Zero is always on the grid (code z), so pruned weights stay
  exactly zero.
- scales are rounded *up* to float16: the grid is then exactly representable
  in GGUF and compressed-tensors files (float16 scales), and rounding up
  keeps the largest weight in range, so every weight is within half a step of
  its grid point.
- dequantization is `(code - z).float() * s` in float32, a single rounding, so
  recovering the codes from a dequantized weight is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FP16_TINY = 2.0**-24
"""Smallest positive float16 (subnormal): the floor of every scale."""


@dataclass(frozen=True)
class GridSpec:
    """How a weight is quantized: bits, group size (None: one group per row), symmetry."""

    bits: int
    group_size: int | None
    symmetric: bool

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def groups(self, in_features: int) -> int:
        """Groups per row for an input width."""
        return 1 if self.group_size is None else in_features // self.group_size

    def width(self, in_features: int) -> int:
        """Inputs per group for an input width."""
        return in_features if self.group_size is None else self.group_size


def round_up_fp16(scale: torch.Tensor) -> torch.Tensor:
    """The smallest float16 value >= each entry, as float32 (floored at FP16_TINY)."""
    scale = scale.float().clamp(FP16_TINY, float(torch.finfo(torch.float16).max))
    half = scale.half()
    below = half.float() < scale
    if bool(below.any()):
        up = torch.nextafter(half, torch.full_like(half, float("inf")))
        half = torch.where(below, up, half)
    return half.float()


def grid_params(w: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each row of `w`, one group per row.

    Args:
        w: (rows, width) values of one group per row (float).
        spec: bits and symmetry (group size is already applied by the caller).

    Returns:
        (scale, zero): float32 scales rounded up to float16, and float32
        integer-valued zero points, both of shape (rows,).
    """
    w = w.float()
    maxq = spec.maxq
    if spec.symmetric:
        absmax = w.abs().amax(dim=1)
        scale = round_up_fp16(absmax * (2.0 / maxq))
        zero = torch.full_like(scale, float(1 << (spec.bits - 1)))
        return scale, zero
    low = w.amin(dim=1).clamp(max=0.0)
    high = w.amax(dim=1).clamp(min=0.0)
    scale = round_up_fp16((high - low) / maxq)
    zero = torch.round(-low / scale).clamp(0, maxq)
    return scale, zero


def quantize_codes(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int
) -> torch.Tensor:
    """Codes round(w / s) + z clamped to [0, maxq], as float32 (broadcasting s and z)."""
    return torch.clamp(torch.round(w.float() / scale) + zero, 0, maxq)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(codes - z) * s in float32: the values a quantized weight holds."""
    return (codes.float() - zero) * scale


def group_view(w: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """(rows, in) -> (rows, groups, width) view of the groups."""
    rows, cols = w.shape
    return w.reshape(rows, spec.groups(cols), spec.width(cols))


def quantize_weight(
    w: torch.Tensor, spec: GridSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest quantization of an (out, in) weight, group by group.

    Returns:
        (dequantized float32 weight, scales (out, groups), zeros (out, groups)).
    """
    groups = group_view(w.float(), spec)
    rows, n_groups, width = groups.shape
    scale, zero = grid_params(groups.reshape(rows * n_groups, width), spec)
    scale, zero = scale.view(rows, n_groups, 1), zero.view(rows, n_groups, 1)
    codes = quantize_codes(groups, scale, zero, spec.maxq)
    deq = dequantize_codes(codes, scale, zero).reshape(w.shape)
    return deq, scale.view(rows, n_groups), zero.view(rows, n_groups)


def expand_groups(t: torch.Tensor, in_features: int) -> torch.Tensor:
    """(out, groups) per-group values repeated to (out, in)."""
    return t.repeat_interleave(in_features // t.shape[1], dim=1)


def codes_of(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int
) -> torch.Tensor | None:
    """The codes of an (out, in) weight on its grid, or None if it left the grid.

    The weight is on its grid when dequantizing the recovered codes (in
    float32, then cast to the weight's dtype) gives back exactly its values.
    """
    cols = w.shape[1]
    s, z = expand_groups(scale.float(), cols), expand_groups(zero.float(), cols)
    codes = quantize_codes(w, s, z, maxq)
    again = dequantize_codes(codes, s, z).to(w.dtype)
    if not torch.equal(again, w):
        return None
    return codes.to(torch.uint8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Flat uint8 codes packed `8 // bits` to a byte, first code in the low bits."""
    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return codes
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    return codes[0::2] | (codes[1::2] << 4)


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes`: the first `count` codes as uint8."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return packed[:count]
    out = np.empty(packed.size * 2, dtype=np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    return out[:count]


def packed_size(count: int, bits: int) -> int:
    """Bytes that `pack_codes` writes for `count` codes."""
    return count if bits == 8 else (count + 1) // 2
