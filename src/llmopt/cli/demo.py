"""Run the whole story on the embedded model: the shipped `demo` recipe, then its report.

`llmopt demo` is `llmopt run demo`: every stage prints its progress, and the
run ends with the headline table (every output measured the same way on
held-out text) and the path of the report (Markdown and HTML, with plots and
a sample generation of every output). `--full` runs the longer story
(`demo-full`: more calibration, longer recoveries, every technique).
"""

from __future__ import annotations

import argparse
import time

HELP = "run the whole story on smollm2-135m (the shipped demo recipe) and write its report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", default=None, help="run folder (default: runs/demo)")
    parser.add_argument("--model", default=None, help="model to start from (default: the recipe's)")
    parser.add_argument(
        "--full", action="store_true", help="the longer story (demo-full: tens of minutes)"
    )
    from llmopt.cli.run import add_set_argument

    add_set_argument(parser)


def run(args: argparse.Namespace) -> int:
    from llmopt.cli.report import print_summary
    from llmopt.pipeline.run import run_recipe

    name = "demo-full" if args.full else "demo"
    started = time.perf_counter()
    result = run_recipe(name, args.output or f"runs/{name}", sets=args.sets, model=args.model)
    print(f"\n{name}: every output measured on the same held-out pydoc tokens")
    print_summary([result.folder])
    print(f"\nreport: {result.report} (and {result.report.with_suffix('.html')})")
    print(f"{name} finished in {time.perf_counter() - started:.0f} s")
    return 0
