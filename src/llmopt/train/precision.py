"""Mixed precision: autocast with fp32 master weights, and the fp16 loss scaler.

Parameters and optimizer state always stay fp32; bf16/fp16 apply only inside
`autocast()` (the forward). fp16's narrow range needs a dynamic loss scale:
`torch.amp.GradScaler` multiplies the loss before backward, unscales before
clipping, skips the optimizer step when a gradient is inf/NaN and lowers the
scale. The trainer counts those skips.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from llmopt.errors import BadInput
from llmopt.train.onednn import fp32_products, fp32_products_reason

DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def cpu_native_bf16() -> str | None:
    """The CPU feature that makes bf16 matrix multiplication native here, or None.

    Asks torch (the same query oneDNN's kernels are chosen by); reads the
    kernel's CPU flags only where torch has no such query. AVX512 without the
    BF16 extension emulates bf16 and gains little, so it does not count.
    """
    query = {
        "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
        "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None),
    }
    if all(ask is not None for ask in query.values()):
        return next((name for name, ask in query.items() if ask()), None)
    try:
        with open("/proc/cpuinfo") as handle:
            flags = set(next(line for line in handle if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return None
    return next((name for name in query if name in flags), None)


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What `--precision auto` picks on `device`, and why (one phrase for the log).

    bf16 where the device computes it natively: a CUDA GPU that supports it, a
    CPU with AMX or AVX512-BF16. On such a CPU bf16 autocast trains about twice
    as fast and gives the same loss curve as fp32 (benchmarks/train_throughput.py,
    tests/train/test_precision.py). Everything else: fp32.
    """
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no bf16"
    if device.type == "cpu":
        feature = cpu_native_bf16()
        if feature is not None and _autocast_works(device, torch.bfloat16):
            return "bf16", f"the CPU has native bf16 ({feature})"
        return "fp32", "the CPU has no native bf16 (no AMX or AVX512-BF16)"
    return "fp32", f"no bf16 default for {device.type}"


def resolve_precision(name: str, device: torch.device) -> str:
    """Turn 'auto' into a concrete precision (see `auto_precision`) and check the device.

    Raises:
        BadInput: bf16/fp16 on a device whose autocast cannot run it.
    """
    if name == "auto":
        return auto_precision(device)[0]
    if name not in DTYPES:
        raise BadInput(f"--precision {name!r}: choose from {', '.join(DTYPES)}")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BadInput(f"--precision bf16: {torch.cuda.get_device_name(device)} cannot do bf16")
    dtype = DTYPES[name]
    if dtype is not None and not _autocast_works(device, dtype):
        raise BadInput(f"--precision {name}: autocast to {dtype} does not run on {device}")
    return name


def describe_precision(asked: str, device: torch.device) -> str:
    """One log line: the precision a run uses and why ('bf16 (auto: the CPU has ...)')."""
    if asked == "auto":
        name, why = auto_precision(device)
        return f"{name} (auto: {why})"
    return f"{asked} (asked for)"


def describe_products(name: str, device: torch.device) -> str | None:
    """For the log: which kernels an fp32 run's matrix products use, when not PyTorch's
    default (fp32 on a CPU where oneDNN is chosen, see `llmopt.train.onednn`), else None."""
    if name == "fp32" and _uses_onednn(device):
        return f"oneDNN ({fp32_products_reason()})"
    return None


def _uses_onednn(device: torch.device) -> bool:
    return device.type == "cpu" and fp32_products_reason() is not None


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    # Ask the device rather than keep a table: a tiny matmul under autocast.
    try:
        with torch.autocast(device.type, dtype=dtype):
            a = torch.ones(4, 4, device=device)
            out = a @ a
        return out.dtype == dtype
    except (RuntimeError, AssertionError):
        return False


class Precision:
    """The autocast context and (for fp16) the loss scaler of one run."""

    def __init__(self, name: str, device: torch.device, init_scale: float = 2.0**16) -> None:
        """Takes a resolved precision name (see `resolve_precision`) and the device."""
        self.name = name
        self.device = device
        self.dtype = DTYPES[name]
        self.scaler = (
            torch.amp.GradScaler(device.type, init_scale=init_scale) if name == "fp16" else None
        )
        # fp32 on a CPU where MKL is slow: products through oneDNN (see llmopt.train.onednn).
        self.onednn = self.dtype is None and _uses_onednn(device)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Forward passes run inside this: autocast in bf16/fp16; in fp32, the CPU's
        fastest fp32 products (`llmopt.train.onednn`) where that is not PyTorch's default."""
        if self.dtype is None:
            with fp32_products(self.onednn):
                yield
            return
        with torch.autocast(self.device.type, dtype=self.dtype):
            yield

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to call backward on (scaled in fp16)."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients back to their true size before clipping or inspecting them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the optimizer step; returns False when the scaler skipped it (inf/NaN)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # The scaler lowers its scale exactly when it found inf/NaN and skipped the step.
        return self.scaler.get_scale() >= before

    @property
    def loss_scale(self) -> float | None:
        """The current fp16 loss scale (None without a scaler)."""
        return self.scaler.get_scale() if self.scaler is not None else None

    def state_dict(self) -> dict:
        """The scaler's state (empty without one)."""
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the scaler's state."""
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
