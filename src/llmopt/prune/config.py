"""The configuration of one pruning stage, and the checks that need more than one field."""

from __future__ import annotations

from pydantic import Field

from llmopt.calibrate.data import CalibrationSettings
from llmopt.config import Fraction01, PositiveInt
from llmopt.errors import BadInput, did_you_mean
from llmopt.sparsity import Pattern, parse_pattern
from llmopt.stage import StageConfig


class PruneConfig(StageConfig, CalibrationSettings):
    """What `llmopt prune` does: one field per flag, recipe key and keyword."""

    method: str
    """magnitude, wanda or sparsegpt."""
    sparsity: Fraction01 | None = None
    """Fraction of each selected layer's weights to zero (implied by an N:M pattern)."""
    threshold: float | None = Field(None, ge=0.0)
    """Magnitude only: zero every weight with |w| < threshold instead of a sparsity."""
    pattern: str = "unstructured"
    """'unstructured' or 'N:M' (N zeros in every M consecutive inputs of a row)."""
    scope: str | None = None
    """Where scores are compared: row, layer or global (default: the method's own)."""
    owl: bool = False
    """Outlier-weighted non-uniform sparsity across blocks (average = sparsity)."""
    owl_lambda: float = Field(0.08, gt=0.0, le=0.5)
    """Largest deviation of a block's sparsity from the target."""
    owl_m: float = Field(5.0, gt=0.0)
    """A score is an outlier above owl_m times its block's mean score."""
    targets: str | None = None
    """Regex on full linear names ('model.layers.3.mlp.up_proj') to prune; default all."""
    skip: str | None = None
    """Regex of linear names to leave dense."""
    damp: float = Field(0.01, gt=0.0)
    """SparseGPT: dampening as a fraction of the mean Hessian diagonal."""
    blocksize: PositiveInt = 128
    """SparseGPT: columns whose masks are chosen together."""
    offload: bool = False
    """Keep the model in CPU memory; only the block being calibrated visits the device."""
    accelerate_2to4: bool = False
    """CUDA + 2:4: measure the pruned model with semi-structured sparse kernels."""

    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    def target_sparsity(self) -> float:
        """The sparsity asked for, directly or through the N:M pattern."""
        implied = self.parsed_pattern().sparsity
        return implied if implied is not None else float(self.sparsity or 0.0)


def check_config(config: PruneConfig, scopes: dict[str, tuple[str, ...]]) -> str:
    """Check the combinations no single field can; return the scope to use.

    Args:
        config: the validated fields.
        scopes: method name -> the scopes it supports (first = default).

    Raises:
        BadInput: an unknown method or scope, or an inconsistent combination.
    """
    if config.method not in scopes:
        raise BadInput(
            f"--method {config.method!r}: unknown{did_you_mean(config.method, scopes)}; "
            f"known: {', '.join(scopes)}"
        )
    pattern = config.parsed_pattern()
    _check_amount(config, pattern)
    scope = config.scope or scopes[config.method][0]
    if scope not in scopes[config.method]:
        raise BadInput(
            f"--scope {scope!r}: {config.method} supports {', '.join(scopes[config.method])}"
        )
    if config.owl and (pattern.structured or scope == "global" or config.threshold is not None):
        raise BadInput(
            "--owl: needs an unstructured per-layer sparsity (not N:M, global or a threshold)"
        )
    return scope


def _check_amount(config: PruneConfig, pattern: Pattern) -> None:
    if config.threshold is not None:
        if config.method != "magnitude":
            raise BadInput(f"--threshold: only for --method magnitude, not {config.method!r}")
        if config.sparsity is not None or pattern.structured:
            raise BadInput("--threshold: give either a threshold or a sparsity/pattern, not both")
        return
    if pattern.structured:
        if config.sparsity is not None and abs(config.sparsity - pattern.sparsity) > 1e-9:
            raise BadInput(
                f"--sparsity {config.sparsity}: pattern {pattern} implies {pattern.sparsity:g}"
            )
        return
    if config.sparsity is None:
        raise BadInput("--sparsity: required (or --pattern N:M, or --threshold for magnitude)")
