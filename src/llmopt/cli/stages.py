"""The verbs that run a stage: generated from the stage registry, one shape for all.

`llmopt VERB MODEL [--output DIR] [--overwrite] [one flag per config field]`
validates the flags into the stage's config, calls `run_stage`, and prints
what the stage did, then the before -> after measurement.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from llmopt.cli.flags import add_config_arguments, config_values, flag_of
from llmopt.stage import Stage
from llmopt.units import change, human_bytes, human_count


def add_stage_arguments(parser: argparse.ArgumentParser, cls: type[Stage]) -> None:
    """MODEL, the output (a folder, or --json for a stage that writes none) and the config flags."""
    parser.add_argument(
        "model", metavar="MODEL", help="zoo name (smollm2-135m, tiny-llama, ...), folder or hub id"
    )
    if cls.writes_checkpoint:
        parser.add_argument("--output", "-o", required=True, help="output checkpoint folder")
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing llmopt output folder (only once the new one is complete)",
        )
    else:
        parser.add_argument("--json", dest="output", default=None, help="also write the metrics")
    add_config_arguments(parser, cls.config_class)


def run_stage_verb(cls: type[Stage], args: argparse.Namespace) -> int:
    """Validate the flags, run the stage, print its summary; returns the exit status."""
    from llmopt.config import build
    from llmopt.pipeline.runner import run_stage
    from llmopt.train.outcome import TrainingInterrupted

    config = build(cls.config_class, config_values(args), name_of=flag_of)
    started = time.perf_counter()
    try:
        outcome = run_stage(
            cls, args.model, args.output, config, overwrite=getattr(args, "overwrite", False)
        )
    except TrainingInterrupted as stop:
        where = stop.checkpoint or "(no run folder)"
        print(f"interrupted after step {stop.step}; checkpoint: {where}")
        print(f"continue with: --resume {where}")
        return 130
    if outcome is None:  # a worker process of a distributed stage
        return 0
    job = cls(config)
    if cls.writes_checkpoint:
        title = f"{cls.name} {args.model} -> {outcome.output} ({outcome.record['format']})"
        rows = job.summary(outcome.record) + result_rows(outcome.metrics)
    else:
        title = f"{args.model} on {config.data} ({config.split})"
        rows = metric_rows(outcome.metrics)
    rows.append(("time", f"{time.perf_counter() - started:.1f} s"))
    print_table(rows, title=title)
    return 0


def result_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """Before -> after rows of a stage's measurement (whatever both sides have)."""
    before, after = metrics.get("before"), metrics.get("after")
    specs = [
        ("perplexity", "perplexity", lambda v: f"{v:.3f}"),
        ("total params", "total_params", human_count),
        ("unique params", "unique_params", human_count),
        ("non-zero", "nonzero_params", human_count),
        ("weights on disk", "weight_bytes", human_bytes),
        ("prefill", "prefill_tokens_per_s", lambda v: f"{v:,.0f} tokens/s"),
        ("decode", "decode_ms_per_token", lambda v: f"{v:.2f} ms/token"),
        ("peak memory", "peak_memory_mb", lambda v: f"{v:,.0f} MiB"),
    ]
    rows = []
    for label, key, show in specs:
        text = change(before, after, key, show)
        if text is not None:
            rows.append((label, text))
    if after and after.get("sample") is not None:
        rows.append(("sample", sample_text(after)))
    return rows


def sample_text(m: dict[str, Any]) -> str:
    """The prompt and its continuation on one line ('|' marks where the model took over)."""
    return f"{m['sample_prompt']}|{m['sample']}".replace("\n", " ")


def metric_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """Readable rows for one measurement (`llmopt eval`)."""
    rows: list[tuple[str, str]] = []
    if "perplexity" in m:
        rows.append(
            (
                "perplexity",
                f"{m['perplexity']:.3f}  ({m['eval_tokens']:,} tokens, seq-len {m['seq_len']})",
            )
        )
    if "total_params" in m:
        rows.append(
            (
                "parameters",
                f"{human_count(m['total_params'])} total, {human_count(m['unique_params'])} unique",
            )
        )
        sparsity = f"(sparsity {100 * m['sparsity']:.2f}%)"
        rows.append(("non-zero", f"{human_count(m['nonzero_params'])}  {sparsity}"))
    if "weight_bytes" in m:
        rows.append(
            (
                "on disk",
                f"{human_bytes(m['weight_bytes'])} weights, {human_bytes(m['disk_bytes'])} folder",
            )
        )
    if "prefill_tokens_per_s" in m:
        rows.append(
            (
                "prefill",
                f"{m['prefill_tokens_per_s']:,.0f} tokens/s  "
                f"(batch {m['speed_batch']} x {m['speed_seq_len']}, {m['device']})",
            )
        )
        rows.append(("decode", f"{m['decode_ms_per_token']:.2f} ms/token (KV cache)"))
        rows.append(("peak memory", f"{m['peak_memory_mb']:,.0f} MiB"))
    if m.get("sample") is not None:
        rows.append(("sample", sample_text(m)))
    return rows


def print_table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    """Two aligned columns, optionally under a title."""
    if title:
        print(title)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
