"""Share parameters across decoder layers: N layers run K unique blocks.

Plans: cycle (layer i runs block i mod K), sequence (runs of N/K neighbours
share), adjacent (neighbouring pairs share), or an explicit --map. A shared
block starts as the average of its layers, its first layer, or a layer taken
at even intervals over the depth (stepwise). --lora-rank R gives every layer
of a shared group its own rank-R delta on each linear (from the SVD of what
sharing changed), buying back quality for a little unique storage.

The layers really use the same tensors: unique parameters and memory drop, and
training updates every user of a block at once. --save-format dense writes
every layer out (plain transformers loads it); shared writes each tensor once
(smaller on disk; llmopt restores the sharing on load). Prints total versus
unique parameters, bytes on disk and the perplexity before and after.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from llmopt.cli.common import (
    add_eval_arguments,
    add_model_argument,
    add_output_arguments,
    eval_config_from_args,
    human_bytes,
    human_count,
    print_table,
)

HELP = "share parameters across layers (N layers -> K unique blocks)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--unique-layers", "-k", type=int, default=None, help="K unique blocks")
    parser.add_argument(
        "--strategy", default="cycle", help="cycle, sequence or adjacent (default: cycle)"
    )
    parser.add_argument("--map", default=None, help="explicit block of each layer: 0,0,1,1,...")
    parser.add_argument(
        "--keep-ends", action="store_true", help="first and last layers keep their own blocks"
    )
    parser.add_argument(
        "--init", default="average", help="average, first or stepwise (default: average)"
    )
    parser.add_argument(
        "--lora-rank", type=int, default=0, help="per-layer low-rank delta rank (default 0: none)"
    )
    parser.add_argument(
        "--tie-embeddings", action="store_true", help="tie the output head to the input embedding"
    )
    parser.add_argument(
        "--save-format",
        default="dense",
        help="dense: plain transformers checkpoint; shared: each tensor once (smaller)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of random delta factors")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--speed", action="store_true", help="also time prefill and decoding")
    add_output_arguments(parser)
    add_eval_arguments(parser)


def _config(args: argparse.Namespace):
    from llmopt.config import build
    from llmopt.share.config import ShareConfig

    return build(
        ShareConfig,
        unique_layers=args.unique_layers,
        strategy=args.strategy,
        map=args.map,
        keep_ends=args.keep_ends,
        init=args.init,
        lora_rank=args.lora_rank,
        tie_embeddings=args.tie_embeddings,
        save_format=args.save_format,
        seed=args.seed,
    )


def _measure(model, tokenizer, eval_config, folder: Path | None) -> dict[str, Any]:
    from llmopt.evaluate import checkpoint_bytes, evaluate_model, model_footprint

    if eval_config is not None:
        return evaluate_model(model, tokenizer, eval_config, folder=folder)
    metrics: dict[str, Any] = model_footprint(model).as_dict()
    if folder is not None:
        metrics.update(checkpoint_bytes(folder))
    return metrics


def run(args: argparse.Namespace) -> int:
    from llmopt.models import ArchAdapter, load_model, load_tokenizer, resolve_model
    from llmopt.outputs import check_output, staged_output
    from llmopt.provenance import start_record, write_record
    from llmopt.runtime import pick_device
    from llmopt.share.stage import prepare_share, share_model
    from llmopt.share.storage import save_shared_checkpoint

    t0 = time.perf_counter()
    check_output(args.output, args.overwrite)
    config = _config(args)
    plan = prepare_share(args.model, config)
    device = pick_device(args.device)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device=device)
    positions = ArchAdapter(model).max_positions
    eval_config = None if args.no_eval else eval_config_from_args(args, positions)
    source = resolve_model(args.model)
    metrics: dict[str, Any] = {
        "before": _measure(
            model, tokenizer, eval_config, source if isinstance(source, Path) else None
        )
    }
    metrics["share"] = share_model(model, config, plan)
    record = start_record(
        "share", str(args.model), {**config.model_dump(), "device": str(device)}, seed=config.seed
    )
    with staged_output(args.output, args.overwrite) as folder:
        save_shared_checkpoint(model, tokenizer, folder, record, config.save_format)
        metrics["after"] = _measure(model, tokenizer, eval_config, folder)
        metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
        record.metrics = metrics
        write_record(folder, record)
    _print_summary(args, record.format, metrics)
    return 0


def _change(before: dict, after: dict, key: str, show) -> str:
    if key not in before or key not in after:
        return show(after[key]) if key in after else "-"
    ratio = after[key] / before[key] if before[key] else float("nan")
    return f"{show(before[key])} -> {show(after[key])}  (x{ratio:.3f})"


def _print_summary(args: argparse.Namespace, fmt: str, metrics: dict) -> None:
    info, before, after = metrics["share"], metrics["before"], metrics["after"]
    rows = [
        ("plan", f"{info['layers']} layers -> {info['unique_blocks']} blocks: {info['block_map']}"),
        ("lora rank", str(info["lora_rank"])),
        ("tied embeddings", "newly tied" if info["tied_embeddings"] else "unchanged"),
        ("total params", _change(before, after, "total_params", human_count)),
        ("unique params", _change(before, after, "unique_params", human_count)),
        ("weights on disk", _change(before, after, "weight_bytes", human_bytes)),
    ]
    if "perplexity" in after:
        rows.append(("perplexity", _change(before, after, "perplexity", lambda v: f"{v:.3f}")))
    if "peak_memory_mb" in after:
        rows.append(
            ("peak memory", _change(before, after, "peak_memory_mb", lambda v: f"{v:,.0f} MiB"))
        )
    rows.append(("format", f"{args.save_format} storage; llmopt.json format {fmt!r}"))
    print_table(rows, title=f"share {args.model} -> {args.output}")
