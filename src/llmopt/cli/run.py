"""Run a recipe: its stages in order, in-process, into one run folder, then a report.

A recipe is a YAML file of named stages whose keys are the verbs' flags
(`--calib-samples` is `calib_samples`); it is validated whole before anything
runs. Run again into the same folder, the run resumes: completed stages with
an unchanged config are reused, an interrupted training stage continues from
its newest checkpoint, and a changed stage is redone with everything after it.
"""

from __future__ import annotations

import argparse

HELP = "run a YAML recipe of stages into one folder (resumable), then write its report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipe", metavar="RECIPE", help="a recipe file, or a shipped recipe's name (demo, ...)"
    )
    parser.add_argument("--output", "-o", default=None, help="run folder (default: runs/NAME)")
    add_set_argument(parser)
    parser.add_argument("--model", default=None, help="replace the recipe's input model")
    parser.add_argument("--no-report", action="store_true", help="do not write report.md/.html")


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """`--set STAGE.KEY=VALUE`, repeatable (llmopt run and llmopt demo)."""
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="change a key of a stage (or defaults.KEY) before validation; repeatable",
    )


def run(args: argparse.Namespace) -> int:
    from llmopt.cli.report import print_summary
    from llmopt.pipeline.run import run_recipe
    from llmopt.train.outcome import TrainingInterrupted

    try:
        result = run_recipe(
            args.recipe, args.output, sets=args.sets, model=args.model, report=not args.no_report
        )
    except TrainingInterrupted as stop:
        print(f"interrupted after step {stop.step}; run the same command again to resume")
        return 130
    print_summary([result.folder])
    if result.report is not None:
        print(f"\nreport: {result.report} (and {result.report.with_suffix('.html')})")
    return 0
