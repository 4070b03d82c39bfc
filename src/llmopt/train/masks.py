"""`--keep-masks`: keep pruned weights pruned while training.

Weights of the decoder-block linears that are exactly zero when training
starts (what a pruning stage left) stay exactly zero. Their gradients are
zeroed after backward, before clipping, so they neither count in the gradient
norm nor enter AdamW's moments (zero gradient -> zero moments -> zero update;
decoupled weight decay of a zero weight is zero). After every optimizer step
the weights are zeroed again, which also covers a skipped fp16 step and any
optimizer that would otherwise move them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from llmopt.train.callbacks import Callback

if TYPE_CHECKING:
    from llmopt.train.trainer import Trainer


def _local(t: torch.Tensor) -> torch.Tensor:
    # FSDP2 parameters are DTensors; each process masks its own shard.
    return t.to_local() if hasattr(t, "to_local") else t


class KeepMasks(Callback):
    """Record the zero pattern of block linears at the start; enforce it every step."""

    def __init__(self) -> None:
        """Masks are recorded in `on_train_start`."""
        self.masks: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}

    def on_train_start(self, trainer: Trainer) -> None:
        """Find each block linear's weight and remember where it is exactly zero."""
        from llmopt.models.arch import ArchAdapter

        adapter = ArchAdapter(trainer.raw_model)
        for block in adapter.blocks():
            for module in adapter.block_linears(block).values():
                weight = module.weight
                zero = _local(weight.detach()) == 0
                if bool(zero.any()):
                    self.masks[id(weight)] = (weight, zero)

    @property
    def zero_count(self) -> int:
        """Weights held at zero on this process."""
        return sum(int(mask.sum()) for _, mask in self.masks.values())

    @torch.no_grad()
    def after_backward(self, trainer: Trainer) -> None:
        """Zero the masked gradients before clipping and the optimizer see them."""
        for weight, mask in self.masks.values():
            if weight.grad is not None:
                _local(weight.grad).masked_fill_(mask, 0)

    @torch.no_grad()
    def after_optimizer_step(self, trainer: Trainer) -> None:
        """Zero the masked weights and AdamW moments."""
        for weight, mask in self.masks.values():
            _local(weight.data).masked_fill_(mask, 0)
            for key in ("exp_avg", "exp_avg_sq"):
                moment = trainer.optimizer.state.get(weight, {}).get(key)
                if moment is not None:
                    _local(moment).masked_fill_(mask, 0)
