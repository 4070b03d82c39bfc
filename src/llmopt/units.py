"""Numbers for people: counts, bytes and before -> after changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def human_count(n: float) -> str:
    """134515008 -> '134.52M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """Bytes in MiB/GiB with two decimals."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.2f} MiB"
    return f"{n / 2**10:.1f} KiB"


def change(
    before: dict[str, Any] | None, after: dict[str, Any] | None, key: str, show: Callable
) -> str | None:
    """'a -> b  (x0.61)' for a metric present after (and maybe before); None when absent."""
    if not after or after.get(key) is None:
        return None
    if not before or before.get(key) is None:
        return show(after[key])
    ratio = after[key] / before[key] if before[key] else float("nan")
    return f"{show(before[key])} -> {show(after[key])}  (x{ratio:.3f})"
