"""Model FLOPs utilisation: achieved training FLOP/s over the device's peak.

Training FLOPs per token follow the PaLM appendix: 6 * N for the matrix
multiplies of N (non-embedding-lookup) parameters, forward plus backward,
plus 12 * layers * attention width * sequence length for the attention
scores and their weighted sum. Recomputation under gradient checkpointing is
not counted (MFU measures useful work).
"""

from __future__ import annotations

import torch
from torch import nn

# Dense (no 2:4 sparsity) peak FLOP/s per device, by precision, from vendor data
# sheets. Matched by substring of the CUDA device name, first hit wins: keep
# the more specific names first. fp32 means TF32 tensor cores are off.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H800", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("A10G", {"bf16": 70e12, "fp16": 70e12, "fp32": 31.2e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    ("RTX 4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
    ("T4", {"fp16": 65e12, "fp32": 8.1e12}),
)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s for `precision`, or None when unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, table in PEAK_FLOPS:
        if key in name:
            return table.get(precision)
    return None


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token (see the module docstring)."""
    from llmopt.models.arch import ArchAdapter

    adapter = ArchAdapter(model)
    unique = {id(p): p.numel() for p in model.parameters()}
    n = sum(unique.values())
    # Lookups are not matmuls: drop position tables, and the token table unless the
    # head reuses it (then its matmul is real work).
    pos = adapter.position_embedding()
    if pos is not None:
        n -= sum(p.numel() for p in pos.parameters())
    emb, head = adapter.embedding(), adapter.head()
    if emb.weight is not getattr(head, "weight", None):
        n -= emb.weight.numel()
    attn_width = adapter.num_heads * adapter.head_dim
    return 6.0 * n + 12.0 * adapter.num_layers * attn_width * seq_len


def mfu(tokens_per_s: float, per_token: float, peak: float | None, processes: int) -> float | None:
    """Fraction of the peak that training achieves (None when the peak is unknown)."""
    if not peak:
        return None
    return tokens_per_s * per_token / (peak * processes)
