"""Run 2:4-pruned linears with PyTorch's semi-structured sparse kernels (CUDA only).

`torch.sparse.to_sparse_semi_structured` stores a 2:4 weight as its kept
halves plus metadata, and sparse tensor cores multiply it about twice as fast
as dense on recent NVIDIA GPUs. It needs fp16/bf16 weights on CUDA and layer
shapes the kernels accept; layers that do not fit stay dense.
"""

from __future__ import annotations

import torch
from torch import nn

from llmopt.errors import BadInput
from llmopt.sparsity import Pattern


def check_semi_structured(device: torch.device, pattern: Pattern) -> None:
    """Fail early unless semi-structured acceleration can run.

    Raises:
        BadInput: not a CUDA device, or the pattern is not 2:4.
    """
    if device.type != "cuda":
        raise BadInput(
            f"--accelerate-2to4: needs a CUDA GPU (semi-structured sparse kernels); "
            f"the device here is {device.type}"
        )
    if (pattern.n, pattern.m) != (2, 4):
        raise BadInput(f"--accelerate-2to4: needs --pattern 2:4, not {pattern}")


def to_semi_structured(linears: list[nn.Module], dtype: torch.dtype = torch.float16) -> int:
    """Replace the weights of 2:4-sparse `nn.Linear`s by semi-structured tensors in place.

    The linears must already be on a CUDA device; they are cast to `dtype`.

    Returns:
        How many layers were converted (the others did not fit the kernels).
    """
    from torch.sparse import to_sparse_semi_structured

    converted = 0
    for module in linears:
        if not isinstance(module, nn.Linear):
            continue  # GPT-2's Conv1D multiplies by the transpose; leave it dense
        weight = module.weight.detach().to(dtype)
        try:
            sparse = to_sparse_semi_structured(weight)
        except (RuntimeError, ValueError):
            continue  # a shape the kernels do not take
        module.to(dtype)
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted += 1
    return converted
