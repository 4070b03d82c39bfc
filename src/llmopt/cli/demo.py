"""Run the whole story on the embedded model: measure, compress, recover, compare.

Every step is an ordinary `llmopt` command, run as its own process and
printed before it runs, so the demo doubles as a tutorial: copy any line. The
demo ends with one table built from the `llmopt.json` of every output.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

HELP = "run the whole story on smollm2-135m (every step is a printed llmopt command)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", default="runs/demo", help="folder for every stage's output"
    )
    parser.add_argument("--model", default="smollm2-135m", help="model to start from")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer tokens and steps (a smoke run, not a measurement)",
    )


def steps(model: str, out: Path, quick: bool, layers: int) -> list[list[str]]:
    """The demo's commands, in order (without the leading `llmopt`).

    `layers` is the model's depth: sharing keeps half of it as unique blocks.
    """
    # Calibration forwards in bf16: the same perplexity as fp32, about twice as fast on CPU.
    calib = [
        "--calib-samples",
        "8" if quick else "64",
        "--calib-seq-len",
        "256" if quick else "512",
        "--calib-dtype",
        "bfloat16",
    ]
    # Every perplexity in the demo scores the same held-out tokens, so they compare.
    tokens = "2048" if quick else "8192"
    measure = ["--eval-max-tokens", tokens]
    train = [
        "--steps",
        "4" if quick else "30",
        "--seq-len",
        "256",
        "--micro-batch-size",
        "2",
        "--lr",
        "1e-4",
        "--warmup",
        "2" if quick else "3",
        "--no-progress",
        *measure,
    ]
    return [
        ["eval", model, "--data", "pydoc", "--max-tokens", tokens],
        [
            "prune",
            model,
            "--method",
            "wanda",
            "--sparsity",
            "0.5",
            *calib,
            "--save-format",
            "sparse",
            *measure,
            "--output",
            str(out / "wanda-50"),
            "--overwrite",
        ],
        [
            "prune",
            model,
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4",
            *calib,
            *measure,
            "--output",
            str(out / "sparsegpt-2of4"),
            "--overwrite",
        ],
        [
            "distill",
            str(out / "sparsegpt-2of4"),
            "--teacher",
            model,
            "--data",
            "pydoc",
            "--keep-masks",
            *train,
            "--output",
            str(out / "sparsegpt-2of4-kd"),
            "--overwrite",
        ],
        [
            "share",
            model,
            "--unique-layers",
            str(max(1, layers // 2)),
            "--strategy",
            "cycle",
            "--init",
            "stepwise",
            "--save-format",
            "shared",
            *measure,
            "--output",
            str(out / "share-half"),
            "--overwrite",
        ],
        [
            "distill",
            str(out / "share-half"),
            "--teacher",
            model,
            "--data",
            "pydoc",
            *train,
            "--output",
            str(out / "share-half-kd"),
            "--overwrite",
        ],
    ]


def summary_rows(out: Path, names: list[str]) -> list[list[str]]:
    """One row per output folder: stage, perplexity, unique/non-zero params, weight bytes."""
    from llmopt.cli.common import human_bytes, human_count
    from llmopt.provenance import read_record

    rows = []
    for name in names:
        record = read_record(out / name)
        if record is None:
            continue
        after = record["metrics"].get("after", {})
        if not after:
            continue
        rows.append(
            [
                name,
                record["stage"],
                f"{after.get('perplexity', float('nan')):.2f}",
                human_count(after.get("unique_params", 0)),
                human_count(after.get("nonzero_params", 0)),
                human_bytes(after.get("weight_bytes", 0)),
                f"{record['wall_time_s']:.0f} s",
            ]
        )
    return rows


def print_summary(out: Path, baseline: dict | None, names: list[str]) -> None:
    header = ["output", "stage", "perplexity", "unique", "non-zero", "weights on disk", "time"]
    rows = summary_rows(out, names)
    if baseline:
        rows.insert(
            0,
            ["(original)", "eval", f"{baseline['perplexity']:.2f}", *summary_cells(baseline), "-"],
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def summary_cells(metrics: dict) -> list[str]:
    from llmopt.cli.common import human_bytes, human_count

    return [
        human_count(metrics["unique_params"]),
        human_count(metrics["nonzero_params"]),
        human_bytes(metrics.get("weight_bytes", 0)),
    ]


def _num_layers(model: str) -> int:
    from transformers import AutoConfig

    from llmopt.models import resolve_model

    return int(AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers)


def run(args: argparse.Namespace) -> int:
    import json

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    commands = steps(args.model, out, args.quick, _num_layers(args.model))
    commands[0] += ["--json", str(out / "original.json")]
    t0 = time.perf_counter()
    for i, argv in enumerate(commands, 1):
        print(f"\n[{i}/{len(commands)}] $ llmopt {shlex.join(argv)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "llmopt.cli", *argv])
        if code != 0:
            print(f"demo: step {i} failed with exit status {code}", file=sys.stderr)
            return code
        print(f"    ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\nSummary (perplexity on held-out pydoc; outputs in {out}/)")
    baseline = json.loads((out / "original.json").read_text())
    names = [Path(a[a.index("--output") + 1]).name for a in commands if "--output" in a]
    print_summary(out, baseline, names)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s")
    return 0
