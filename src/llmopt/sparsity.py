"""N:M sparsity patterns: N zeros in every M consecutive inputs of a row (2:4, 4:8).

Pruning prunes to them and joint pruning + quantization (GPTQ with SparseGPT's
masks) does too, so the pattern, its parsing and the check that it tiles a
layer live here, below both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from llmopt.errors import BadInput


@dataclass(frozen=True)
class Pattern:
    """Unstructured (n = m = 0) or N:M (n zeros in every m consecutive inputs)."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float | None:
        """The sparsity an N:M pattern implies; None when unstructured."""
        return self.n / self.m if self.m else None

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def parse_pattern(text: str) -> Pattern:
    """'unstructured' or 'N:M' with 0 < N < M.

    Raises:
        BadInput: anything else, naming the value.
    """
    if text == "unstructured":
        return Pattern()
    match = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not match:
        raise BadInput(f"--pattern {text!r}: expected 'unstructured' or N:M such as 2:4")
    n, m = int(match[1]), int(match[2])
    if not 0 < n < m:
        raise BadInput(f"--pattern {text!r}: N:M needs 0 < N < M")
    return Pattern(n, m)


def check_divisible(pattern: Pattern, name: str, in_features: int) -> None:
    """N:M groups must tile every row exactly.

    Raises:
        BadInput: M does not divide the layer's input width.
    """
    if pattern.structured and in_features % pattern.m:
        raise BadInput(
            f"--pattern {pattern}: M={pattern.m} does not divide the input width "
            f"{in_features} of {name}"
        )
