"""Run the whole story on the embedded model: measure, compress, recover, compare.

Every step is an ordinary `llmopt` command, run as its own process and
printed before it runs, so the demo doubles as a tutorial: copy any line.
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
    parser.add_argument("--output", "-o", default="runs/demo", help="folder for every stage's output")
    parser.add_argument("--model", default="smollm2-135m", help="model to start from")
    parser.add_argument("--quick", action="store_true",
                        help="fewer tokens and steps (a smoke run, not a measurement)")


def steps(model: str, out: Path, quick: bool) -> list[list[str]]:
    """The demo's commands, in order (without the leading `llmopt`)."""
    return [["eval", model, "--data", "pydoc", *(["--max-tokens", "2048"] if quick else [])]]


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    commands = steps(args.model, out, args.quick)
    t0 = time.perf_counter()
    for i, argv in enumerate(commands, 1):
        print(f"\n[{i}/{len(commands)}] $ llmopt {shlex.join(argv)}", flush=True)
        started = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "llmopt.cli", *argv])
        if code != 0:
            print(f"demo: step {i} failed with exit status {code}", file=sys.stderr)
            return code
        print(f"    ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}/")
    return 0
