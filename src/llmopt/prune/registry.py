"""The pruning methods by name: `PRUNERS[name](config)` builds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llmopt.prune.base import Pruner
from llmopt.prune.magnitude import MagnitudePruner
from llmopt.prune.sparsegpt import SparseGPTPruner
from llmopt.prune.wanda import WandaPruner

if TYPE_CHECKING:
    from llmopt.prune.config import PruneConfig

PRUNERS: dict[str, Callable[[PruneConfig], Pruner]] = {
    "magnitude": lambda config: MagnitudePruner(),
    "wanda": lambda config: WandaPruner(),
    "sparsegpt": lambda config: SparseGPTPruner(blocksize=config.blocksize, damp=config.damp),
}
