"""What every pruning method receives: the plan (which layers, how sparse) and calibration.

A method is a class with `needs_calibration`, the `scopes` it supports (the
first is its default), `from_config(config)` and `prune(model, plan,
calibration)`; methods are listed in `llmopt.prune.PRUNERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import nn

from llmopt.calibrate import Calibration
from llmopt.errors import BadInput
from llmopt.models.arch import ArchAdapter, select_block_linears, weight_out_in
from llmopt.sparsity import Pattern, check_divisible

if TYPE_CHECKING:
    from llmopt.prune.config import PruneConfig


@dataclass
class PrunePlan:
    """Which linears to prune and how.

    Attributes:
        targets: block index -> {name relative to the block: linear module}.
        block_sparsity: the target sparsity of each block (uniform, or from OWL).
        pattern: unstructured or N:M.
        scope: 'row', 'layer' or 'global' (how scores are compared).
        threshold: magnitude only: prune |w| < threshold instead of a sparsity.
    """

    targets: dict[int, dict[str, nn.Module]]
    block_sparsity: list[float]
    pattern: Pattern
    scope: str
    threshold: float | None = None

    def named_targets(self) -> dict[tuple[int, str], nn.Module]:
        return {(i, name): m for i, group in self.targets.items() for name, m in group.items()}


class Pruner(Protocol):
    """One pruning method."""

    needs_calibration: bool
    scopes: tuple[str, ...]

    @classmethod
    def from_config(cls, config: PruneConfig) -> Pruner:
        """Build the method with its own settings from the stage config."""
        ...

    def prune(self, model: nn.Module, plan: PrunePlan, calib: Calibration | None) -> None:
        """Zero (and, for some methods, update) the planned weights in place."""
        ...


def select_targets(
    adapter: ArchAdapter, targets: str | None, skip: str | None, pattern: Pattern
) -> dict[int, dict[str, nn.Module]]:
    """The decoder-block linears to prune, filtered by regexes on their full names.

    Embeddings and the head are never candidates: only block linears are.

    Raises:
        BadInput: a bad regex, nothing selected, or an N:M pattern whose M does not
            divide a selected layer's input width.
    """
    chosen = select_block_linears(adapter, targets, skip)
    prefix = adapter.blocks_path
    for index, linears in chosen.items():
        for name, module in linears.items():
            check_divisible(pattern, f"{prefix}.{index}.{name}", weight_out_in(module).shape[1])
    if not chosen:
        raise BadInput(
            f"--targets {targets!r} / --skip {skip!r}: no linear layer selected "
            f"(names look like {prefix}.0.{adapter.linear_names()[0]})"
        )
    return chosen
