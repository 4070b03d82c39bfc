"""Processes: process groups, DDP/FSDP2 wrapping, reductions (the launch is `pipeline.launch`).

`torchrun` sets RANK/WORLD_SIZE/LOCAL_RANK; without them the run is a single
process and every function here is a cheap no-op. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from llmopt.errors import BadInput


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process that torchrun (or another launcher) started."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_world(device_name: str = "auto") -> tuple[World, torch.device]:
    """Join the process group (if launched by torchrun) and pick this process's device.

    Raises:
        BadInput: CUDA was asked for but is missing, or fewer GPUs than processes.
    """
    from llmopt.runtime import pick_device

    device = pick_device(device_name)
    if not launched_by_torchrun():
        return World(), device
    world = World(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise BadInput(
                f"{world.world_size} processes per node but {torch.cuda.device_count()} GPU(s)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def close_world() -> None:
    """Leave the process group (if any).

    A gloo group is not destroyed: its destructor joins gloo's worker threads
    while holding the GIL, and a thread still releasing a finished all-reduce
    needs the GIL to free its tensors, so the two can wait on each other
    forever (seen on this code's DDP runs). The process ends right after this
    anyway; the operating system closes the sockets.
    """
    if dist.is_initialized() and dist.get_backend() != "gloo":
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (identity in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather_objects(obj: object) -> list[object]:
    """Every process's `obj`, in rank order (a one-element list in a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over all processes."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def wrap_fsdp(model: nn.Module, device: torch.device, world: World) -> nn.Module:
    """FSDP2: one `fully_shard` unit per decoder block, then the root (embeddings, head).

    Per-block units let each block's all-gather overlap the previous block's
    compute and free its full weights right after use.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from llmopt.models.arch import ArchAdapter

    mesh = init_device_mesh(device.type, (world.world_size,))
    for block in ArchAdapter(model).blocks():
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-batches that are not the step's last.

    DDP: `no_sync()`. FSDP2: `set_requires_gradient_sync(False)`. Gradients
    then accumulate locally and are reduced once, with the last backward.
    """
    if enabled:
        if hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)
        yield
        return
    if hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(False)
        yield
    else:
        yield
