"""The teacher's block outputs on the calibration batches, computed one block at a time.

The targets are the teacher's own: its block i sees its own block i-1 output
(the dense model's activations), never the student's. Only one set of hidden
states is held (the latest block's), and only the block being run visits
the compute device, as in the sequential engine.
"""

from __future__ import annotations

import torch
from torch import nn

from llmopt.calibrate.engine import BlockStep, capture_block_inputs
from llmopt.models.arch import ArchAdapter


class TeacherStates:
    """Walks the teacher forward block by block; `output(i)` is block i's output per batch."""

    def __init__(
        self,
        teacher: nn.Module,
        ids: torch.Tensor,
        batch_size: int,
        device: torch.device,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        """Capture the inputs of the teacher's first block on the calibration `ids`."""
        self.blocks = ArchAdapter(teacher).blocks()
        self.home = next(teacher.parameters()).device
        self.device = device
        self.compute_dtype = compute_dtype
        self.inputs = capture_block_inputs(teacher, ids, batch_size, device)
        self.done = -1
        """The last block whose output `self.inputs.hidden` holds (-1: the embeddings)."""

    @torch.no_grad()
    def output(self, layer: int) -> list[torch.Tensor]:
        """The teacher's output of block `layer` on every batch (layers may only rise).

        Raises:
            ValueError: `layer` is below a block already passed.
        """
        if layer < self.done:
            raise ValueError(f"teacher block {layer} was already passed (at {self.done})")
        while self.done < layer:
            index = self.done + 1
            block = self.blocks[index].to(self.device)
            step = BlockStep(index, block, self.inputs, compute_dtype=self.compute_dtype)
            self.inputs = self.inputs.replace_hidden(step.outputs())
            block.to(self.home)
            self.done = index
        return self.inputs.hidden
