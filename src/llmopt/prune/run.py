"""Prune a model from a `PruneConfig`: check everything, calibrate, prune, measure.

`prepare_pruning` does every check and loads the calibration data (cheap), so
that a caller can fail fast before measuring or writing anything;
`run_pruning` does the work and reports the sparsity it reached.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from llmopt.calibrate import Calibration, load_calibration
from llmopt.models.arch import ArchAdapter, weight_out_in
from llmopt.prune.base import PrunePlan, Pruner, select_targets
from llmopt.prune.config import PruneConfig, check_config
from llmopt.prune.owl import measure_outlier_ratios, owl_sparsities
from llmopt.prune.registry import PRUNERS


@dataclass
class PreparedPrune:
    """A checked plan, the method that will carry it out and its calibration data."""

    config: PruneConfig
    pruner: Pruner
    plan: PrunePlan
    calib: Calibration | None


@dataclass
class PruneResult:
    """What pruning reached.

    Attributes:
        layer_sparsity: full linear name -> fraction of zeros.
        block_sparsity: per block, zeros / weights over its pruned linears (None: none).
        block_target: the sparsity planned for each block (differs with OWL).
        sparsity: zeros / weights over every pruned linear.
        pruned_weights: weights in the pruned linears; zero_weights: how many are zero.
    """

    layer_sparsity: dict[str, float]
    block_sparsity: list[float | None]
    block_target: list[float]
    sparsity: float
    pruned_weights: int
    zero_weights: int
    owl_ratios: list[float | None] | None
    calibration_s: float
    prune_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def prepare_pruning(
    model: nn.Module,
    tokenizer,
    config: PruneConfig,
    device: torch.device | None = None,
    progress: bool = True,
) -> PreparedPrune:
    """Check the config against the model and load calibration data if needed.

    Raises:
        BadInput: unknown method/scope, inconsistent flags, an unsupported model
            family, N:M not tiling a layer, nothing selected, or missing/short
            calibration data.
    """
    scope = check_config(config, {name: cls.scopes for name, cls in PRUNERS.items()})
    adapter = ArchAdapter(model)
    pattern = config.parsed_pattern()
    targets = select_targets(adapter, config.targets, config.skip, pattern)
    pruner = PRUNERS[config.method].from_config(config)
    plan = PrunePlan(
        targets=targets,
        block_sparsity=[config.target_sparsity()] * adapter.num_layers,
        pattern=pattern,
        scope=scope,
        threshold=config.threshold,
    )
    needs_data = pruner.needs_calibration or config.owl
    calib = None
    if needs_data:
        why = f"--method {config.method}" if pruner.needs_calibration else "--owl"
        calib = load_calibration(config, tokenizer, model, device, progress, why)
    return PreparedPrune(config, pruner, plan, calib)


def run_pruning(model: nn.Module, prepared: PreparedPrune) -> PruneResult:
    """Prune `model` in place as prepared; returns the sparsity reached."""
    config, plan = prepared.config, prepared.plan
    t0 = time.perf_counter()
    ratios = None
    if config.owl:
        assert prepared.calib is not None
        ratios = measure_outlier_ratios(model, plan.targets, prepared.calib, config.owl_m)
        plan.block_sparsity = owl_sparsities(ratios, config.target_sparsity(), config.owl_lambda)
    t1 = time.perf_counter()
    prepared.pruner.prune(model, plan, prepared.calib)
    t2 = time.perf_counter()
    return _measure(model, plan, ratios, t1 - t0, t2 - t1)


def prune_model(
    model: nn.Module,
    tokenizer,
    config: PruneConfig,
    device: torch.device | None = None,
    progress: bool = True,
) -> PruneResult:
    """Check, calibrate and prune `model` in place (see `prepare_pruning` for errors)."""
    return run_pruning(model, prepare_pruning(model, tokenizer, config, device, progress))


def _measure(
    model: nn.Module,
    plan: PrunePlan,
    ratios: list[float | None] | None,
    calibration_s: float,
    prune_s: float,
) -> PruneResult:
    adapter = ArchAdapter(model)
    layer: dict[str, float] = {}
    per_block: list[float | None] = [None] * adapter.num_layers
    total = zeros = 0
    for index, group in plan.targets.items():
        block_total = block_zeros = 0
        for name, module in group.items():
            w = weight_out_in(module)
            z = int(w.numel() - torch.count_nonzero(w))
            layer[f"{adapter.blocks_path}.{index}.{name}"] = z / w.numel()
            block_total, block_zeros = block_total + w.numel(), block_zeros + z
        per_block[index] = block_zeros / block_total
        total, zeros = total + block_total, zeros + block_zeros
    return PruneResult(
        layer_sparsity=layer,
        block_sparsity=per_block,
        block_target=list(plan.block_sparsity),
        sparsity=zeros / max(total, 1),
        pruned_weights=total,
        zero_weights=zeros,
        owl_ratios=ratios,
        calibration_s=round(calibration_s, 3),
        prune_s=round(prune_s, 3),
    )
