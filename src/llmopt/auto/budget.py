"""The budget of a search: which cost, and what fraction of the input model's it may be.

`params=0.6` allows at most 60% of the input's unique parameters (what
memory holds: a tied head or a shared block counts once), `nonzero=0.5` at
most half of its non-zero parameters, `bytes=0.4` at most 40% of its weight
files on disk, `latency=0.7` at most 70% of its decode latency (batch 1, with
the KV cache, measured on this machine side by side with the input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmopt.errors import BadInput, did_you_mean

KINDS: dict[str, tuple[str, str]] = {
    "params": ("unique_params", "unique parameters"),
    "nonzero": ("nonzero_params", "non-zero parameters"),
    "bytes": ("weight_bytes", "bytes of weights on disk"),
    "latency": ("decode_ms_per_token", "decode latency"),
}
"""Budget kind -> (the measured metric it limits, what that is in words)."""


@dataclass(frozen=True)
class Budget:
    """At most `fraction` of the input model's `kind` cost."""

    kind: str
    fraction: float

    @property
    def metric(self) -> str:
        """The key of the measured metric (a stage record's `metrics.after`)."""
        return KINDS[self.kind][0]

    @property
    def words(self) -> str:
        return KINDS[self.kind][1]

    def __str__(self) -> str:
        return f"{self.kind}={self.fraction:g}"

    def ratio(self, metrics: dict[str, Any], original: dict[str, Any]) -> float:
        """The measured cost of `metrics` as a fraction of `original`'s.

        Raises:
            KeyError: a measurement lacks the budget's metric.
        """
        return float(metrics[self.metric]) / float(original[self.metric])

    def meets(self, ratio: float) -> bool:
        """Whether a measured cost ratio is within the budget."""
        return ratio <= self.fraction


def parse_budget(text: str) -> Budget:
    """`KIND=FRACTION` (params, nonzero, bytes, latency; a fraction in (0, 1]).

    Raises:
        BadInput: not KIND=FRACTION, an unknown kind, or a fraction outside (0, 1].
    """
    kind, sep, value = str(text).partition("=")
    kind = kind.strip()
    if not sep or not kind:
        raise BadInput(f"--budget {text!r}: expected KIND=FRACTION, e.g. params=0.6")
    if kind not in KINDS:
        raise BadInput(
            f"--budget {text}: unknown kind {kind!r}{did_you_mean(kind, KINDS)}; "
            f"known: {', '.join(KINDS)}"
        )
    try:
        fraction = float(value)
    except ValueError:
        raise BadInput(f"--budget {text}: {value!r} is not a number") from None
    if not 0.0 < fraction <= 1.0:  # also refuses nan and inf
        raise BadInput(
            f"--budget {text}: must be a fraction in (0, 1] of the input model's {KINDS[kind][1]}"
        )
    return Budget(kind, fraction)
