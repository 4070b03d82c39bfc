"""Prune the linear layers of a model's decoder blocks and measure what it cost.

Methods: magnitude (|W|), wanda (|W| * ||X||, needs calibration data),
sparsegpt (OBS weight updates, needs calibration data). Patterns: unstructured
or N:M (N zeros in every M consecutive inputs, e.g. 2:4). --owl spreads the
sparsity unevenly across blocks (fewer zeros where activations have outliers),
keeping the average. Prints the sparsity of every block, the overall sparsity,
the perplexity before and after on held-out text, and the time taken; all of
it goes into llmopt.json in the output folder.
"""

from __future__ import annotations

import argparse
import time

from llmopt.cli.common import (
    add_eval_arguments,
    add_model_argument,
    add_output_arguments,
    eval_config_from_args,
    human_bytes,
    print_table,
)

HELP = "prune weights (magnitude, wanda, sparsegpt; unstructured or N:M; OWL)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--method", required=True, help="magnitude, wanda or sparsegpt")
    parser.add_argument("--sparsity", type=float, default=None, help="fraction to zero, in [0, 1)")
    parser.add_argument(
        "--threshold", type=float, default=None, help="magnitude: zero |w| < T instead"
    )
    parser.add_argument("--pattern", default="unstructured", help="unstructured or N:M (2:4, 4:8)")
    parser.add_argument(
        "--scope", default=None, help="row, layer or global (default: the method's own)"
    )
    parser.add_argument("--owl", action="store_true", help="outlier-weighted per-block sparsity")
    parser.add_argument("--owl-lambda", type=float, default=0.08, help="OWL: largest deviation")
    parser.add_argument("--owl-m", type=float, default=5.0, help="OWL: outlier = M x mean score")
    parser.add_argument("--targets", default=None, help="regex of linear names to prune")
    parser.add_argument("--skip", default=None, help="regex of linear names to leave dense")
    calib = parser.add_argument_group("calibration")
    calib.add_argument(
        "--calib-data", default="pydoc", help="calibration text (default: pydoc; 'none': none)"
    )
    calib.add_argument("--calib-samples", type=int, default=128, help="blocks (default 128)")
    calib.add_argument("--calib-seq-len", type=int, default=None, help="tokens per block (512)")
    calib.add_argument("--calib-batch-size", type=int, default=8, help="blocks per forward")
    calib.add_argument(
        "--calib-dtype",
        default="float32",
        help="float32 or bfloat16: dtype of the calibration forwards (statistics stay fp32)",
    )
    calib.add_argument("--text-field", default="text", help="jsonl/parquet/hf text field")
    calib.add_argument("--seed", type=int, default=0, help="calibration sampling seed")
    calib.add_argument("--damp", type=float, default=0.01, help="sparsegpt: dampening")
    calib.add_argument("--blocksize", type=int, default=128, help="sparsegpt: mask block")
    parser.add_argument(
        "--save-format",
        default="dense",
        choices=["dense", "sparse"],
        help="dense: plain transformers checkpoint; sparse: bitmask + values (smaller)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument(
        "--offload",
        action="store_true",
        help="keep the model in CPU memory; only the block being calibrated visits --device "
        "(for models larger than the GPU; measurement then runs on the CPU)",
    )
    parser.add_argument(
        "--accelerate-2to4",
        action="store_true",
        help="CUDA + 2:4: measure the pruned model with semi-structured sparse kernels",
    )
    parser.add_argument("--speed", action="store_true", help="also time prefill and decoding")
    add_output_arguments(parser)
    add_eval_arguments(parser)


def _config(args: argparse.Namespace, positions: int):
    from llmopt.config import build
    from llmopt.prune import PruneConfig

    return build(
        PruneConfig,
        method=args.method,
        sparsity=args.sparsity,
        threshold=args.threshold,
        pattern=args.pattern,
        scope=args.scope,
        owl=args.owl,
        owl_lambda=args.owl_lambda,
        owl_m=args.owl_m,
        targets=args.targets,
        skip=args.skip,
        calib_data=None if args.calib_data.lower() == "none" else args.calib_data,
        calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len or min(512, positions),
        calib_batch_size=args.calib_batch_size,
        calib_dtype=args.calib_dtype,
        text_field=args.text_field,
        seed=args.seed,
        damp=args.damp,
        blocksize=args.blocksize,
    )


def run(args: argparse.Namespace) -> int:
    from llmopt.errors import BadInput
    from llmopt.evaluate.summary import evaluate_model
    from llmopt.models import ArchAdapter, load_model, load_tokenizer
    from llmopt.outputs import check_output, staged_output
    from llmopt.provenance import start_record, write_record
    from llmopt.prune import prepare_pruning, run_pruning
    from llmopt.prune.semistructured import check_semi_structured
    from llmopt.runtime import pick_device

    t0 = time.perf_counter()
    check_output(args.output, args.overwrite)
    device = pick_device(args.device)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device=None if args.offload else device)
    positions = ArchAdapter(model).max_positions
    config = _config(args, positions)
    eval_config = None if args.no_eval else eval_config_from_args(args, positions)
    if args.accelerate_2to4:
        check_semi_structured(device, config.parsed_pattern())
        if args.offload:
            raise BadInput("--accelerate-2to4: the model must be on the GPU; drop --offload")
    # Started before the work, so the record's wall time covers measuring and pruning.
    record = start_record(
        "prune",
        str(args.model),
        {**config.model_dump(), "save_format": args.save_format, "device": str(device)},
        seed=config.seed,
    )
    record.format = args.save_format
    prepared = prepare_pruning(model, tokenizer, config, device=device)
    metrics: dict = {}
    if eval_config is not None:
        metrics["before"] = evaluate_model(model, tokenizer, eval_config)
    result = run_pruning(model, prepared)
    metrics["prune"] = result.as_dict()
    with staged_output(args.output, args.overwrite) as folder:
        _save(model, tokenizer, folder, args.save_format)
        if args.accelerate_2to4:
            metrics["semi_structured_layers"] = _accelerate(model, prepared)
        if eval_config is not None:
            metrics["after"] = evaluate_model(model, tokenizer, eval_config, folder=folder)
        metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
        record.metrics = metrics
        write_record(folder, record)
    _print_summary(args, result, metrics)
    return 0


def _save(model, tokenizer, folder, save_format: str) -> None:
    from llmopt.prune.storage import save_sparse_model

    if save_format == "sparse":
        save_sparse_model(model, folder)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _accelerate(model, prepared) -> int:
    from llmopt.prune.semistructured import to_semi_structured

    linears = [m for group in prepared.plan.targets.values() for m in group.values()]
    model.half()
    return to_semi_structured(linears)


def _print_summary(args: argparse.Namespace, result, metrics: dict) -> None:
    rows = []
    for index, (reached, target) in enumerate(
        zip(result.block_sparsity, result.block_target, strict=True)
    ):
        if reached is not None:
            rows.append((f"block {index}", f"{100 * reached:6.2f}%  (target {100 * target:.2f}%)"))
    print_table(rows, title=f"{args.method} {args.pattern}: sparsity of the pruned linears")
    summary = [
        ("saved", f"{args.output} ({args.save_format})"),
        (
            "overall",
            f"{100 * result.sparsity:.2f}% of {result.pruned_weights:,} weights in "
            f"{len(result.layer_sparsity)} linears",
        ),
    ]
    before, after = metrics.get("before"), metrics.get("after")
    if before and after:
        summary.append(("perplexity", f"{before['perplexity']:.3f} -> {after['perplexity']:.3f}"))
        summary.append(
            (
                "model sparsity",
                f"{100 * after['sparsity']:.2f}% of all {after['unique_params']:,} parameters",
            )
        )
        summary.append(("on disk", f"{human_bytes(after['weight_bytes'])} weights"))
    summary.append(
        (
            "time",
            f"{result.calibration_s + result.prune_s:.1f} s pruning, "
            f"{metrics['wall_time_s']:.1f} s total",
        )
    )
    print_table(summary, title="result")
