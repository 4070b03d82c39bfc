"""Speed and memory: prefill throughput, per-token decode latency, peak memory.

Timings are medians over repeats after a warm-up, with a CUDA synchronise
before every clock read (kernels are asynchronous). Peak CPU memory is the
process's resident high-water mark (VmHWM), reset before the measurement
through /proc/self/clear_refs where Linux allows it.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmopt.models.compat import cache_kwargs, output_cache


@dataclass(frozen=True)
class Speed:
    prefill_tokens_per_s: float
    decode_ms_per_token: float
    peak_memory_mb: float
    speed_batch: int
    speed_seq_len: int
    decode_tokens: int
    device: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator stats, or Linux VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Not Linux, or not permitted: the peak is then the process lifetime's.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last reset, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def measure_speed(
    model,
    batch_size: int = 1,
    seq_len: int = 256,
    decode_tokens: int = 32,
    repeats: int = 3,
    seed: int = 0,
) -> Speed:
    """Time prefill and cached decoding on random tokens.

    Prefill: one forward pass over (batch_size, seq_len) tokens. Decode: after
    a prefill, `decode_tokens` single-token steps that reuse the KV cache.
    """
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(device)
    model.eval()
    reset_peak_memory(device)

    def prefill() -> float:
        _sync(device)
        t0 = time.perf_counter()
        model(input_ids=prompt, use_cache=False)
        _sync(device)
        return time.perf_counter() - t0

    def decode() -> float:
        out = model(input_ids=prompt, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(input_ids=token, use_cache=True, **cache_kwargs(model, output_cache(out)))
            token = out.logits[:, -1:].argmax(-1)
        _sync(device)
        return (time.perf_counter() - t0) / decode_tokens

    prefill()  # warm-up: allocator, kernels, lazy inits
    prefill_s = statistics.median(prefill() for _ in range(repeats))
    decode_s = statistics.median(decode() for _ in range(repeats)) if decode_tokens else 0.0
    return Speed(
        prefill_tokens_per_s=batch_size * seq_len / prefill_s,
        decode_ms_per_token=decode_s * 1000,
        peak_memory_mb=peak_memory_mb(device),
        speed_batch=batch_size,
        speed_seq_len=seq_len,
        decode_tokens=decode_tokens,
        device=str(device),
    )
