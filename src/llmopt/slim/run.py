"""Slim a model from a `SlimConfig`: score importance, choose the shape, cut, describe.

`slim_model` is the stage's apply step: it takes a loaded model and returns
a new, smaller one (the input is not changed) with a JSON-able dict of what
was done. Loading, measuring, saving and recording belong to the stage
runner; `check_slim` (in `check.py`) is the cheap check that runs before.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import nn

from llmopt.calibrate import Calibration, load_calibration, progress_printer
from llmopt.slim.candidates import candidate_shapes
from llmopt.slim.check import check_slim, requested_shape
from llmopt.slim.choose import Choice, choose_shape
from llmopt.slim.config import SlimConfig
from llmopt.slim.importance import Importance, block_scores
from llmopt.slim.plan import SlimPlan, full_plan, plan_for
from llmopt.slim.probes import probe_batches, skip_losses, taylor_scores
from llmopt.slim.shape import ParamCounter, Shape
from llmopt.slim.surgery import build_slim_model


def cut_axes(original: Shape, shapes: list[Shape]) -> dict[str, bool]:
    """Which axes (layers, ffn, heads) any of `shapes` cuts."""
    return {
        "layers": any(s.layers < original.layers for s in shapes),
        "ffn": any(s.ffn < original.ffn for s in shapes),
        "heads": any(s.heads < original.heads for s in shapes),
    }


def score_importance(
    model: nn.Module,
    calib: Calibration,
    config: SlimConfig,
    original: Shape,
    cuts: dict[str, bool],
    device: torch.device | None = None,
    progress: bool = True,
) -> Importance:
    """Importance of every axis in `cuts`, with the metrics `config` names.

    One walk of the calibration blocks gives the activation, weighted, output
    and influence scores; Taylor and perplexity scores need full-model passes
    on the first `config.score_tokens` calibration tokens.
    """
    taylor_ffn = cuts["ffn"] and config.ffn_score == "taylor"
    taylor_heads = cuts["heads"] and config.head_score == "taylor"
    skip_layers = cuts["layers"] and config.layer_score == "perplexity"
    walk = {
        "ffn": config.ffn_score if cuts["ffn"] and not taylor_ffn else None,
        "heads": config.head_score if cuts["heads"] and not taylor_heads else None,
        "layers": config.layer_score if cuts["layers"] and not skip_layers else None,
    }
    out = block_scores(model, calib, **walk) if any(walk.values()) else Importance()
    batches = probe_batches(calib.ids, config.score_tokens)
    if taylor_ffn or taylor_heads:
        report = progress_printer("slim: Taylor scores", progress)
        ffn, heads = taylor_scores(model, batches, taylor_ffn, taylor_heads, device, report)
        if ffn is not None:
            out.ffn, out.metrics["ffn"] = ffn, "taylor"
        if heads is not None:
            out.heads, out.metrics["heads"] = heads, "taylor"
    if skip_layers:
        report = progress_printer("slim: loss with each layer skipped", progress)
        out.layers = skip_losses(model, original, batches, device, report)
        out.metrics["layers"] = "perplexity"
    return out


def _print_candidates(choice: Choice, original: Shape) -> None:
    for row in choice.candidates:
        mark = "*" if row["shape"] == choice.winner.as_dict() else " "
        final = f"{row['kl']:.4f}" if row["kl"] is not None else "-"
        sys.stderr.write(
            f"{mark} {row['label']:<44} params {row['params_kept']:6.1%}  "
            f"KL screen {row['kl_screen']:.4f}  all {final}\n"
        )
    sys.stderr.write(f"slim: chose {choice.winner.label(original)}: {choice.why}\n")


def slim_model(
    model: nn.Module,
    tokenizer,
    config: SlimConfig,
    device: torch.device | None = None,
    progress: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Score importance on calibration data, choose the shape, and build the smaller model.

    Args:
        model: a causal LM of a supported family (not changed).
        tokenizer: its tokenizer (for the calibration text).
        config: what to remove.
        device: where scoring runs (default: where the model is).
        progress: print progress lines (and the --params candidates) to stderr.

    Returns:
        (the new model, an ordinary transformers model on the input's device
        and dtype; a JSON-able dict of what was removed and why).

    Raises:
        BadInput: everything `check_slim` refuses, and missing or short calibration data.
    """
    check_slim(model.config, config)
    counter = ParamCounter(model.config)
    original = counter.original
    if config.params is not None:
        shapes = candidate_shapes(
            model.config, config.params, config.round_to, config.params_depths, counter
        )
    else:
        shapes = [requested_shape(model.config, config)]
    cuts = cut_axes(original, shapes)
    t0 = time.perf_counter()
    importance, choice, calib = Importance(), None, None
    if any(cuts.values()):
        calib = load_calibration(config, tokenizer, model, device, progress, why="slimming")
        importance = score_importance(model, calib, config, original, cuts, device, progress)
    t1 = time.perf_counter()
    target = shapes[0]
    if config.params is not None:
        assert calib is not None
        report = progress_printer(f"slim: KL of {len(shapes)} candidates", progress)
        batches = probe_batches(calib.ids, config.score_tokens)
        choice = choose_shape(model, shapes, importance, counter, batches, device, report)
        target = choice.winner
        if progress:
            _print_candidates(choice, original)
    t2 = time.perf_counter()
    plan = plan_for(original, target, importance) if any(cuts.values()) else full_plan(original)
    slimmed = build_slim_model(model, plan)
    t3 = time.perf_counter()
    facts = describe(plan, importance, counter, choice, calib)
    facts["seconds"] = {
        "scoring": round(t1 - t0, 2),
        "choosing": round(t2 - t1, 2),
        "surgery": round(t3 - t2, 2),
    }
    return slimmed, facts


def _short(values: torch.Tensor) -> list:
    return [float(f"{v:.4g}") for v in values.tolist()]


def describe(
    plan: SlimPlan,
    importance: Importance,
    counter: ParamCounter,
    choice: Choice | None,
    calib: Calibration | None,
) -> dict[str, Any]:
    """The JSON-able facts of a slimming for llmopt.json."""
    original, shape = plan.original, plan.shape
    removed_layers = [i for i in range(original.layers) if i not in plan.layers]
    facts: dict[str, Any] = {
        "shape_before": original.as_dict(),
        "shape_after": shape.as_dict(),
        "params_before": counter.total,
        "params_after": counter.count(shape),
        "params_kept": round(counter.count(shape) / counter.total, 4),
        "removed": {
            "layers": removed_layers,
            "ffn_channels_per_layer": original.ffn - shape.ffn,
            "kv_groups": _removed_units(plan.layers, plan.groups, original.kv_groups),
            "query_heads": _removed_units(plan.layers, plan.heads, original.heads),
        },
        "scores": _score_facts(plan, importance),
    }
    if choice is not None:
        facts["candidates"] = choice.candidates
        facts["choice"] = choice.why
    if calib is not None:
        facts["calibration"] = {
            "samples": int(calib.ids.shape[0]),
            "seq_len": int(calib.ids.shape[1]),
        }
    return facts


def _removed_units(layers, kept: tuple[torch.Tensor, ...], total: int) -> dict[str, list[int]]:
    out = {}
    for layer, keep in zip(layers, kept, strict=True):
        gone = sorted(set(range(total)) - set(keep.tolist()))
        if gone:
            out[str(layer)] = gone
    return out


def _score_facts(plan: SlimPlan, importance: Importance) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if importance.layers is not None:
        out["layers"] = {
            "metric": importance.metrics["layers"],
            "values": _short(importance.layers),
        }
    if importance.heads is not None:
        out["heads"] = {
            "metric": importance.metrics["heads"],
            "values": [_short(row) for row in importance.heads],
        }
    if importance.ffn is not None:
        # Per kept layer: the share of the layer's channel score that the kept channels hold.
        shares = [
            float(importance.ffn[layer, keep].sum() / importance.ffn[layer].sum().clamp_min(1e-30))
            for layer, keep in zip(plan.layers, plan.channels, strict=True)
        ]
        out["ffn"] = {
            "metric": importance.metrics["ffn"],
            "kept_score_share": _short(torch.tensor(shares)),
        }
    return out
