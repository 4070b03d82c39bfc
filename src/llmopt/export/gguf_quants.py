"""Tensor data for a GGUF file: the block types, their fallbacks, and exact pass-through.

llama.cpp quantizes each row in blocks (32 values for q8_0/q4_0/q5_0, 256 for
q4_k); a tensor whose rows do not split into whole blocks falls back to the
next type that fits (q4_k -> q5_0 -> f16, q8_0/q4_0 -> f16), as llama.cpp's
quantizer does. The `gguf` package quantizes q8_0, q4_0 and q5_0; q4_k is
written here (the package can only read it).

A weight that llmopt already quantized is not rounded a second time when its
grid fits the GGUF type: GGUF q8_0 and q4_0 blocks are `d * q` with a float16
d and a signed integer q per 32 values, which is exactly an llmopt grid whose
scale is d and whose code minus zero point is q (4-bit symmetric for q4_0;
4-bit, or 8-bit symmetric, for q8_0), when its groups are whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

QT = GGMLQuantizationType
FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    QT.Q4_K: QT.Q5_0,
    QT.Q5_0: QT.F16,
    QT.Q4_0: QT.F16,
    QT.Q8_0: QT.F16,
}
Q4_K_BLOCK, Q4_K_SUB = 256, 32


@dataclass(frozen=True)
class Grid:
    """An llmopt grid in the GGUF tensor's row order: (rows, cols) codes, per-group scale/zero."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    symmetric: bool


def fitting_type(qtype: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    """`qtype`, or its first fallback whose blocks tile a row of `cols` values."""
    while qtype not in (QT.F16, QT.F32) and cols % GGML_QUANT_SIZES[qtype][0]:
        qtype = FALLBACK[qtype]
    return qtype


def encode(
    values: np.ndarray, qtype: GGMLQuantizationType, grid: Grid | None = None
) -> tuple[np.ndarray, bool]:
    """Data of a 2-D float32 tensor in `qtype` (which must fit its rows).

    Returns:
        (the array to hand to GGUFWriter, whether it is exact: an llmopt grid
        written as it is).
    """
    if qtype == QT.F32:
        return values.astype(np.float32), False
    if qtype == QT.F16:
        return values.astype(np.float16), False
    if grid is not None and (direct := _direct(grid, qtype)) is not None:
        return direct, True
    if qtype == QT.Q4_K:
        return quantize_q4_k(values), False
    return quants.quantize(values.astype(np.float32), qtype), False


def _direct(grid: Grid, qtype: GGMLQuantizationType) -> np.ndarray | None:
    """q8_0 / q4_0 blocks holding exactly an llmopt grid's values, or None if it does not fit."""
    rows, cols = grid.codes.shape
    width = cols // grid.scale.shape[1]
    fits = {
        QT.Q8_0: grid.bits == 4 or grid.symmetric,
        QT.Q4_0: grid.bits == 4 and grid.symmetric,
    }
    if not fits.get(qtype, False) or width % 32:
        return None
    expand = cols // grid.scale.shape[1]
    signed = grid.codes.long() - grid.zero.long().repeat_interleave(expand, dim=1)
    d = grid.scale.repeat_interleave(width // 32, dim=1).numpy().astype(np.float16)
    d_bytes = d.reshape(rows, cols // 32, 1).view(np.uint8)  # (rows, blocks, 2)
    q = signed.numpy().reshape(rows, cols // 32, 32)
    if qtype == QT.Q8_0:
        payload = q.astype(np.int8).view(np.uint8)
    else:  # q4_0: value i in the low nibble of byte i, value i + 16 in its high nibble
        u = (q + 8).astype(np.uint8)
        payload = u[..., :16] | (u[..., 16:] << 4)
    return np.concatenate([d_bytes, payload], axis=-1).reshape(rows, -1)


def _round_up_f16(x: np.ndarray) -> np.ndarray:
    """The smallest float16 >= each (non-negative) value, as float32."""
    half = x.astype(np.float16)
    below = half.astype(np.float32) < x
    half[below] = np.nextafter(half[below], np.float16(np.inf))
    return half.astype(np.float32)


def _ratio(values: np.ndarray, per_block: np.ndarray) -> np.ndarray:
    """values / per_block (broadcast over sub-blocks), 0 where the block's factor is 0."""
    den = per_block[:, None]
    return np.divide(values, den, where=den > 0, out=np.zeros_like(values))


def quantize_q4_k(values: np.ndarray) -> np.ndarray:
    """Q4_K blocks of a (rows, 256 k) float32 tensor.

    Each 256-value block has 8 sub-blocks of 32 values with their own scale and
    min (6 bits each, against a float16 d and dmin of the block):
    value = d * sc * q - dmin * m with q in [0, 15]. The mins are rounded up
    first and the scales then up to what the range needs, so no value is
    clipped: every value is within half a sub-block step of its code.
    """
    rows = values.shape[0]
    x = values.astype(np.float32).reshape(-1, 8, Q4_K_SUB)
    low = np.minimum(x.min(-1), 0.0)  # (blocks, 8); 0 is always representable
    need_m = -low
    dmin = _round_up_f16(need_m.max(-1) / 63.0)
    mq = np.ceil(_ratio(need_m, dmin))
    eff_m = dmin[:, None] * mq
    need_s = (x.max(-1) + eff_m) / 15.0
    d = _round_up_f16(need_s.max(-1) / 63.0)
    sc = np.ceil(_ratio(need_s, d))
    eff_s = d[:, None] * sc
    safe = np.where(eff_s > 0, eff_s, 1.0)[..., None]
    q = np.clip(np.rint((x + eff_m[..., None]) / safe), 0, 15).astype(np.uint8)
    q[eff_s == 0] = 0
    return _pack_q4_k(d, dmin, sc.astype(np.uint8), mq.astype(np.uint8), q).reshape(rows, -1)


def _pack_q4_k(d, dmin, sc, mq, q) -> np.ndarray:
    """The 144-byte Q4_K block layout: d, dmin (float16), 12 bytes of 6-bit scales/mins, codes."""
    n = d.shape[0]
    scales = np.empty((n, 12), dtype=np.uint8)
    # bytes 0-3: scales 0-3 plus the top 2 bits of scales 4-7; bytes 4-7 the same for mins;
    # bytes 8-11: the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble).
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = mq[:, :4] | ((mq[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mq[:, 4:] & 0x0F) << 4)
    # 4 chunks of 64 values: byte l of a chunk holds value l (low) and value l + 32 (high).
    chunks = q.reshape(n, 4, 2, Q4_K_SUB)
    qs = (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, 128)
    head = np.stack([d, dmin], axis=1).astype(np.float16).view(np.uint8)
    return np.concatenate([head, scales, qs], axis=1)
