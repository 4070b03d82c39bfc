"""Quantize a model from a `QuantizeConfig`, in place.

`quantize_model` runs `check_quantize` (quantize/check.py) first, then rounds
each targeted linear (RTN) or walks the blocks with GPTQ, and returns the
facts a stage records: per-layer errors, bits, groups, sparsity, time.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from llmopt.calibrate import BlockStep, input_groups, load_calibration, watch_inputs
from llmopt.errors import BadInput
from llmopt.models.arch import ArchAdapter
from llmopt.quantize.check import Targets, check_quantize, extra_modules, select_targets
from llmopt.quantize.config import QuantizeConfig
from llmopt.quantize.gptq import gptq_quantize
from llmopt.quantize.grid import quantize_weight
from llmopt.quantize.state import QuantState, attach, matrix, quantized_modules, state_of


def _refuse_shared(adapter: ArchAdapter, targets: Targets) -> None:
    """GPTQ fits a weight to one layer's inputs: a weight shared by layers has several."""
    owner: dict[int, str] = {}
    for index, group in targets.items():
        for name, module in group.items():
            full = f"{adapter.blocks_path}.{index}.{name}"
            first = owner.setdefault(_storage(module), full)
            if first != full:
                raise BadInput(
                    f"--method gptq: {full} shares its weight with {first}; quantize before "
                    "sharing layers, or use --method rtn"
                )


def _attach_result(module: nn.Module, config: QuantizeConfig, scale, zero) -> None:
    attach(
        module,
        QuantState(
            bits=config.bits,
            group_size=config.group_size,
            symmetric=config.symmetric,
            scale=scale.detach().float().cpu(),
            zero=zero.detach().float().cpu(),
        ),
    )


ERROR_ROWS = 256
"""Errors are estimated on at most this many evenly spaced rows: a full pass over every
weight and a matmul per row cost as much as the GPTQ walk itself on a CPU."""


def _layer_facts(old: torch.Tensor, new: torch.Tensor, hessian: torch.Tensor | None) -> dict:
    """Exact zero count, and relative squared errors of the weight and (with a Hessian,
    ||dW X||^2 / ||W X||^2 = tr(dW H dW^T) / tr(W H W^T)) of the layer's output."""
    zeros = new.numel() - int(torch.count_nonzero(new))
    rows = torch.linspace(0, old.shape[0] - 1, min(ERROR_ROWS, old.shape[0])).long()
    w = old[rows].float()
    d = w - new[rows].float()
    norm = float(w.square().sum())
    facts = {
        "weight_error": round(float(d.square().sum()) / norm, 8) if norm else 0.0,
        "sparsity": round(zeros / new.numel(), 6),
        "weights": new.numel(),
        "zero_weights": zeros,
    }
    if hessian is not None:
        num, den = float(((d @ hessian) * d).sum()), float(((w @ hessian) * w).sum())
        facts["output_error"] = round(num / den, 8) if den > 0 else 0.0
    return facts


def _rtn(module: nn.Module, config: QuantizeConfig) -> dict:
    w = matrix(module)
    old = w.detach().clone()
    deq, scale, zero = quantize_weight(w, config.grid())
    w.copy_(deq)
    _attach_result(module, config, scale, zero)
    return _layer_facts(old, w, None)


def _gptq_blocks(model, tokenizer, config, targets, device, progress, facts) -> float:
    """Quantize every targeted linear with GPTQ, block by block; returns calibration seconds."""
    t0 = time.perf_counter()
    calib = load_calibration(config, tokenizer, model, device, progress, "--method gptq")
    load_s = time.perf_counter() - t0
    adapter = ArchAdapter(model)
    joint, spec = config.joint(), config.grid()

    def handle(step: BlockStep) -> None:
        chosen = targets.get(step.index, {})
        groups = [g for g in input_groups(adapter, step.block) if any(n in chosen for n in g)]
        if not groups:
            step.weights_changed = False
            return
        with watch_inputs(groups, hessian=True) as stats:
            # Stop where the last watched group reads its input: nothing after it is needed.
            step.feed(until=next(iter(groups[-1].values())))
        for group, stat in zip(groups, stats, strict=True):
            members = {n: m for n, m in group.items() if n in chosen}
            hessian = stat.hessian()
            stat.xtx = None  # one Hessian alive at a time
            weights = [matrix(m) for m in members.values()]
            old = torch.cat([w.detach().float() for w in weights])
            where = f"block {step.index} {', '.join(members)}"
            result = gptq_quantize(
                old,
                hessian,
                spec,
                joint=joint,
                segments=[w.shape[0] for w in weights],
                act_order=config.act_order,
                blocksize=config.blocksize,
                damp=config.damp,
                where=where,
            )
            sizes = [w.shape[0] for w in weights]
            parts = zip(
                members.items(),
                weights,
                result.weight.split(sizes),
                result.scale.split(sizes),
                result.zero.split(sizes),
                old.split(sizes),
                strict=True,
            )
            for (name, module), w, new, scale, zero, before in parts:
                w.copy_(new)
                _attach_result(module, config, scale, zero)
                full = f"{adapter.blocks_path}.{step.index}.{name}"
                facts[full] = _layer_facts(before, new, hessian)

    calib.run(model, handle, "gptq")
    return load_s


def quantize_model(
    model: nn.Module,
    tokenizer,
    config: QuantizeConfig,
    device: torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Quantize `model` in place as `config` says; its weights end on their grids.

    Args:
        model: a causal LM of a supported family (fp32 recommended).
        tokenizer: its tokenizer (GPTQ samples calibration text with it).
        config: the stage's settings.
        device: where GPTQ runs each block (None: where the model is).
        progress: print one progress line per block.

    Returns:
        JSON-able facts: method and grid, per-layer relative errors (weight and,
        for GPTQ, layer output on the calibration data) and sparsity, counts,
        the effective bits per weight of the quantized layers, and timings.

    Raises:
        BadInput: everything `check_quantize` refuses, missing or too little
            calibration data, or a Hessian that cannot be made positive definite.
    """
    check_quantize(model.config, config)
    adapter = ArchAdapter(model)
    targets = select_targets(adapter, config)
    if config.method == "gptq":
        _refuse_shared(adapter, targets)
    layers: dict[str, dict] = {}
    t0 = time.perf_counter()
    calibration_s = 0.0
    with torch.no_grad():
        if config.method == "gptq":
            calibration_s = _gptq_blocks(
                model, tokenizer, config, targets, device, progress, layers
            )
        else:
            grids: dict[int, QuantState] = {}
            for index, group in targets.items():
                for name, module in group.items():
                    if _storage(module) in grids:  # a weight shared by layers is rounded once
                        attach(module, grids[_storage(module)])
                        continue
                    layers[f"{adapter.blocks_path}.{index}.{name}"] = _rtn(module, config)
                    grids[_storage(module)] = state_of(module)
        _quantize_extra(adapter, config, layers)
    elapsed = time.perf_counter() - t0
    return _summary(model, config, layers, calibration_s, elapsed)


def _storage(module: nn.Module) -> int:
    return matrix(module).untyped_storage().data_ptr()


def _quantize_extra(adapter: ArchAdapter, config: QuantizeConfig, layers: dict) -> None:
    """Round the embedding and/or head to nearest; a tied pair is one matrix, done once."""
    grids: dict[int, QuantState] = {}
    for name, module in extra_modules(adapter, config).items():
        if _storage(module) not in grids:
            layers[name] = _rtn(module, config)
            grids[_storage(module)] = state_of(module)
    # Tied embedding and head are one matrix: whichever was asked, both carry its grid.
    for name, module in (("embeddings", adapter.embedding()), ("head", adapter.head())):
        if module is not None and _storage(module) in grids:
            attach(module, grids[_storage(module)])
            layers.setdefault(name, {"tied": True})


def _summary(model, config: QuantizeConfig, layers: dict, calibration_s, elapsed) -> dict:
    modules = quantized_modules(model)
    # each matrix rounded in this call has one entry (tied or shared partners have none)
    weights = sum(f.get("weights", 0) for f in layers.values())
    zeros = sum(f.get("zero_weights", 0) for f in layers.values())
    spec = config.grid()
    per_group = 16 + (0 if spec.symmetric else 8)  # float16 scale (+ uint8 zero point)
    group = spec.group_size
    overhead = per_group / group if group else 0.0
    return {
        "method": config.method,
        "bits": config.bits,
        "group_size": config.group_size,
        "symmetric": config.symmetric,
        "act_order": config.act_order,
        "joint_pattern": config.pattern if config.joint().active else None,
        "joint_sparsity": config.joint().sparsity if config.joint().active else None,
        "quantized_modules": len(modules),
        "quantized_weights": weights,
        "zero_weights": zeros,
        "sparsity": round(zeros / weights, 6) if weights else 0.0,
        "bits_per_weight": round(spec.bits + overhead, 4),
        "layers": layers,
        "calibration_s": round(calibration_s, 3),
        "quantize_s": round(elapsed - calibration_s, 3),
    }
