"""The configuration of one quantization stage: one field per flag."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from llmopt.calibrate.data import CalibrationSettings
from llmopt.config import Fraction01, PositiveInt
from llmopt.errors import BadInput
from llmopt.quantize.gptq import JointSparsity
from llmopt.quantize.grid import GridSpec
from llmopt.sparsity import parse_pattern
from llmopt.stage import StageConfig


class QuantizeConfig(StageConfig, CalibrationSettings):
    """What `llmopt quantize` does: weight-only quantization, optionally joint with pruning."""

    method: Literal["rtn", "gptq"]
    """rtn: round each weight to its grid (no data); gptq: round column by column and
    compensate each error in the remaining columns, using calibration data."""
    bits: Literal[4, 8]
    """Bits per weight."""
    group_size: int | None = 128
    """Inputs sharing one scale and zero point (-1: one per output channel); must divide
    every quantized input width. Left at the default, a smaller power of two is used
    where 128 does not divide (smollm2's 576-wide layers get 64)."""
    symmetric: bool = True
    """Zero point fixed at the middle of the grid (the vLLM/W4A16 and GGUF q4_0 layout);
    False: a zero point per group, which fits skewed groups better."""
    act_order: bool = False
    """GPTQ: visit columns by decreasing activation energy (static groups, no reordering
    index on disk)."""
    damp: float = Field(0.01, gt=0.0)
    """GPTQ: dampening added to the Hessian diagonal, as a fraction of its mean."""
    blocksize: PositiveInt = 128
    """GPTQ: columns whose errors are propagated together."""
    embeddings: bool = False
    """Also quantize the token embedding (round to nearest; shared with a tied head)."""
    head: bool = False
    """Also quantize the output head (round to nearest; shared with tied embeddings)."""
    sparsity: Fraction01 | None = None
    """GPTQ only: also prune this fraction of each layer in the same walk (SparseGPT)."""
    pattern: str = "unstructured"
    """Joint pruning pattern: 'unstructured' or 'N:M' (N zeros in every M inputs)."""
    targets: str | None = None
    """Regex on full linear names ('model.layers.3.mlp.up_proj') to quantize; default all."""
    skip: str | None = None
    """Regex on full linear names to leave in full precision."""

    @field_validator("group_size")
    @classmethod
    def _per_channel(cls, value: int | None) -> int | None:
        if value is None or value == -1:
            return None
        if value < 1:
            raise ValueError("must be a positive number of inputs, or -1 / None for per channel")
        return value

    def grid(self) -> GridSpec:
        """The grid every quantized weight of this stage uses."""
        return GridSpec(self.bits, self.group_size, self.symmetric)

    def joint(self) -> JointSparsity:
        """The pruning done in the GPTQ walk (inactive when none was asked).

        Raises:
            BadInput: the pattern is not 'unstructured' or N:M with 0 < N < M, or
                a sparsity disagrees with the one the pattern implies.
        """
        pattern = parse_pattern(self.pattern)
        if not pattern.structured:
            return JointSparsity(sparsity=float(self.sparsity or 0.0))
        implied = pattern.n / pattern.m
        if self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
            raise BadInput(f"--sparsity {self.sparsity}: pattern {pattern} implies {implied:g}")
        return JointSparsity(sparsity=implied, n=pattern.n, m=pattern.m)
