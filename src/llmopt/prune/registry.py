"""The pruning methods by name: `PRUNERS[name].from_config(config)` builds one."""

from __future__ import annotations

from llmopt.prune.base import Pruner
from llmopt.prune.magnitude import MagnitudePruner
from llmopt.prune.sparsegpt import SparseGPTPruner
from llmopt.prune.wanda import WandaPruner

PRUNERS: dict[str, type[Pruner]] = {
    "magnitude": MagnitudePruner,
    "wanda": WandaPruner,
    "sparsegpt": SparseGPTPruner,
}
