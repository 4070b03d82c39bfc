"""Measure a model: perplexity on held-out text, size, bytes on disk, speed, memory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from llmopt.cli.common import (
    add_data_arguments,
    add_model_argument,
    metric_rows,
    print_table,
    write_json,
)

HELP = "measure perplexity, size, speed and memory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    add_data_arguments(parser)
    parser.add_argument(
        "--split",
        default="validation",
        choices=["train", "validation", "all"],
        help="which split of the data to score (default: validation)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="window length (default: 512, or the model's positions if fewer)",
    )
    parser.add_argument("--stride", type=int, default=None, help="sliding-window step")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="score only the first N tokens"
    )
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    from llmopt.config import build
    from llmopt.evaluate.summary import EvalConfig, evaluate_model
    from llmopt.models import ArchAdapter, load_model, load_tokenizer, resolve_model
    from llmopt.runtime import pick_device

    device = pick_device(args.device)
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device=device)
    seq_len = args.seq_len or min(512, ArchAdapter(model).max_positions)
    config = build(
        EvalConfig,
        data=args.data,
        split=args.split,
        text_field=args.text_field,
        seq_len=seq_len,
        stride=args.stride,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        speed=not args.no_speed,
    )
    where = resolve_model(args.model)
    metrics = evaluate_model(
        model, tokenizer, config, folder=where if isinstance(where, Path) else None
    )
    metrics["wall_time_s"] = round(time.perf_counter() - t0, 2)
    print_table(metric_rows(metrics), title=f"{args.model} on {args.data} ({args.split})")
    if args.json:
        write_json(
            args.json, {"model": args.model, "data": args.data, "split": args.split, **metrics}
        )
    return 0
