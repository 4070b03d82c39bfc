"""The search's clock, one function that tests can replace to make time pass."""

from __future__ import annotations

import time


def now() -> float:
    """Seconds on a monotonic clock (only differences mean anything)."""
    return time.monotonic()
