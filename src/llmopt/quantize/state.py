"""What a quantized model carries in memory.

A quantized model stays an ordinary float model: each quantized linear (or
embedding) holds exactly its dequantized values, so every later stage,
evaluation and exporter works on it unchanged. The grid it lies on is
attached to the module as a plain attribute (`QUANT_ATTR`), outside the
state dict, so `save_pretrained` and `load_state_dict` never see it. Its
integer codes are not kept: they are recovered from the weight when needed,
which also tells whether the weight is still on its grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmopt.models.arch import is_linear, weight_out_in
from llmopt.quantize.grid import GridSpec, codes_of

QUANT_ATTR = "llmopt_quant"


@dataclass
class QuantState:
    """The grid of one quantized weight, in its (out, in) orientation."""

    bits: int
    group_size: int | None
    """Inputs per group; None: one group per row."""
    symmetric: bool
    scale: torch.Tensor
    """(out, groups) float32 on the CPU, each value float16-representable."""
    zero: torch.Tensor
    """(out, groups) float32 on the CPU, integer-valued in [0, 2^bits - 1]."""

    @property
    def spec(self) -> GridSpec:
        return GridSpec(self.bits, self.group_size, self.symmetric)

    def describe(self) -> dict[str, object]:
        """JSON-able summary: bits, group size, symmetry."""
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}


def matrix(module: nn.Module) -> torch.Tensor:
    """The weight of a linear or embedding as an (out, in) view; writes go to the module.

    An embedding's (vocab, hidden) rows are its "outputs": groups run along hidden.
    """
    if isinstance(module, nn.Embedding):
        return module.weight.data
    return weight_out_in(module)


def is_quantizable(module: nn.Module) -> bool:
    """True for the module kinds a grid can be attached to."""
    return is_linear(module) or isinstance(module, nn.Embedding)


def attach(module: nn.Module, state: QuantState) -> None:
    """Record that `module`'s weight lies on `state`'s grid."""
    setattr(module, QUANT_ATTR, state)


def state_of(module: nn.Module) -> QuantState | None:
    """The grid attached to a module, or None."""
    return getattr(module, QUANT_ATTR, None)


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module of `model` that carries a grid, by its full name (each module once)."""
    return {name: m for name, m in model.named_modules() if state_of(m) is not None}


def is_quantized(model: nn.Module) -> bool:
    """True when any module of `model` carries a quantization grid."""
    return any(state_of(m) is not None for m in model.modules())


def current_codes(module: nn.Module) -> torch.Tensor | None:
    """The (out, in) uint8 codes of a quantized module's weight, None if it left its grid."""
    state = state_of(module)
    if state is None:
        raise ValueError("module is not quantized")
    w = matrix(module).detach().cpu()
    return codes_of(w, state.scale, state.zero, state.spec.maxq)
