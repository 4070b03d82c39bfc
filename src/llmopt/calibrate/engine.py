"""The sequential layer-by-layer calibration engine (pruning, slimming and quantization use it).

Data-aware compression needs, for every decoder block, the activations that
reach its linear layers. Running the whole model once and hooking every
layer would give the activations of the *original* model; after block i is
changed, block i+1 really sees different inputs. The engine therefore walks
the blocks in order:

1. capture the inputs of block 0 (a forward pre-hook on the first block records
   its positional and keyword arguments, then stops the forward, so the rest of
   the model never runs);
2. for block i: the caller's handler installs hooks (e.g. `watch_inputs`),
   calls `step.feed()` to push every calibration batch through the block,
   then changes the block's weights;
3. the *updated* block runs again on the same inputs; its outputs are block
   i+1's inputs, so errors made in block i are seen (and compensated) by i+1.

Only the current block is moved to the compute device, so a model larger
than the device's memory can be calibrated. Calibration samples go through
in batches, which keeps the matrix multiplications large.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from llmopt.models.arch import ArchAdapter


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early; never escapes the engine."""


def _stop(*_: Any, **__: Any) -> None:
    raise _StopForward


def _first_output(out: Any) -> torch.Tensor:
    # Decoder blocks return a tensor in transformers 5, a tuple in older versions.
    return out[0] if isinstance(out, tuple | list) else out


@dataclass
class BlockInputs:
    """What one block receives for every calibration batch.

    `hidden[b]` is the hidden state of batch b; `args[b]` / `kwargs[b]` are the
    other arguments the model passed to the block (position embeddings, masks),
    which every block of the model receives unchanged.
    """

    hidden: list[torch.Tensor]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]

    def replace_hidden(self, hidden: list[torch.Tensor]) -> BlockInputs:
        return BlockInputs(hidden, self.args, self.kwargs)

    def batches(self) -> Iterator[tuple[torch.Tensor, tuple[Any, ...], dict[str, Any]]]:
        yield from zip(self.hidden, self.args, self.kwargs, strict=True)


def _move_non_blocks(adapter: ArchAdapter, device: torch.device) -> None:
    """Move everything a forward touches before block 0 (embeddings, rotary tables)."""
    backbone = adapter.backbone
    blocks = adapter.blocks()
    for child in backbone.children():
        if child is not blocks:
            child.to(device)


def capture_block_inputs(
    model: nn.Module, ids: torch.Tensor, batch_size: int, device: torch.device
) -> BlockInputs:
    """Run the model up to its first block and record that block's arguments.

    Args:
        model: a causal LM whose family `ArchAdapter` knows.
        ids: calibration token ids, shape (samples, seq_len).
        batch_size: samples per forward pass.
        device: where the embeddings and block 0 run; the recorded tensors live there.

    Returns:
        One entry per batch of the hidden states and the other arguments.
    """
    adapter = ArchAdapter(model)
    first = adapter.blocks()[0]
    record = BlockInputs([], [], [])

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        record.hidden.append(hidden)
        record.args.append(tuple(args[1:]))
        record.kwargs.append(kwargs)
        raise _StopForward

    home = next(model.parameters()).device
    _move_non_blocks(adapter, device)
    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            for batch in ids.split(batch_size):
                with contextlib.suppress(_StopForward):
                    model(input_ids=batch.to(device), use_cache=False)
    finally:
        handle.remove()
        _move_non_blocks(adapter, home)
    return record


def _cast(obj: Any, dtype: torch.dtype) -> Any:
    """Floating tensors inside tuples, lists and dicts cast to `dtype`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple | list):
        return type(obj)(_cast(x, dtype) for x in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype) for k, v in obj.items()}
    return obj


@contextmanager
def _cast_block(block: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Run a block at `dtype` without losing its full-precision weights.

    The parameters' data is swapped for low-precision copies and swapped back
    afterwards, so hooks on the block's modules still fire and updates made by
    the handler (between feeds) go to the full-precision weights.
    """
    if dtype is None:
        yield
        return
    saved = {}
    for tensor in [*block.parameters(), *block.buffers()]:
        if tensor.is_floating_point() and tensor.dtype != dtype:
            saved[tensor] = tensor.data
            tensor.data = tensor.data.to(dtype)
    try:
        yield
    finally:
        for tensor, data in saved.items():
            tensor.data = data


@dataclass
class BlockStep:
    """The block being calibrated, handed to the caller's handler.

    Set `weights_changed = False` when the handler only measured: the outputs
    of a full `feed()` are then reused instead of running the block again.
    """

    index: int
    block: nn.Module
    inputs: BlockInputs
    weights_changed: bool = True
    compute_dtype: torch.dtype | None = None
    """Run the block's forwards at this dtype (e.g. bfloat16); weights keep their own."""
    _outputs: list[torch.Tensor] | None = field(default=None, repr=False)

    def feed(self, until: nn.Module | None = None) -> None:
        """Push every calibration batch through the block (the handler's hooks see it).

        Args:
            until: stop each batch when this submodule is about to run (after its
                own pre-hooks), to skip work whose result nobody needs.
        """
        handle = until.register_forward_pre_hook(_stop) if until is not None else None
        outputs: list[torch.Tensor] = []
        dtype = self.compute_dtype
        try:
            with torch.no_grad(), _cast_block(self.block, dtype):
                for hidden, args, kwargs in self.inputs.batches():
                    if dtype is not None:
                        hidden, args, kwargs = (
                            _cast(hidden, dtype),
                            _cast(args, dtype),
                            _cast(kwargs, dtype),
                        )
                    with contextlib.suppress(_StopForward):
                        outputs.append(_first_output(self.block(hidden, *args, **kwargs)))
        finally:
            if handle is not None:
                handle.remove()
        self._outputs = outputs if until is None else None

    def outputs(self) -> list[torch.Tensor]:
        """The block's outputs on every batch, with its current weights."""
        if self.weights_changed or self._outputs is None:
            self.weights_changed = False
            self.feed()
        assert self._outputs is not None
        return self._outputs


BlockHandler = Callable[[BlockStep], None]


def run_sequential(
    model: nn.Module,
    ids: torch.Tensor,
    handler: BlockHandler,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    progress: Callable[[int, int], None] | None = None,
    compute_dtype: torch.dtype | None = None,
) -> None:
    """Call `handler` on every decoder block in order, feeding it the updated model's inputs.

    Args:
        model: the causal LM (anywhere; each block visits `device` in turn).
        ids: calibration token ids, shape (samples, seq_len).
        handler: measures and changes one block; see `BlockStep`.
        batch_size: calibration samples per forward pass.
        device: compute device (default: where the model is).
        progress: called as progress(done, total) after each block.
        compute_dtype: run the block forwards at this dtype (e.g. bfloat16 on a CPU
            with bf16 matrix units, as fp16 is used on GPUs); the weights the handler
            changes and the statistics stay in full precision, the hidden states
            passed between blocks are kept at this dtype.
    """
    adapter = ArchAdapter(model)
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    inputs = capture_block_inputs(model, ids, batch_size, device)
    blocks = adapter.blocks()
    for index, block in enumerate(blocks):
        block.to(device)
        step = BlockStep(index, block, inputs, compute_dtype=compute_dtype)
        with torch.no_grad():
            handler(step)
        if index + 1 < len(blocks):  # the last block's outputs feed nothing we calibrate
            inputs = inputs.replace_hidden(step.outputs())
        block.to(home)
        if progress is not None:
            progress(index + 1, len(blocks))
