"""Write a report of one or more runs: a table of every output, plots and sample generations.

RUN_DIR is a run folder (`llmopt run`), a stage's output folder, or a folder
of output folders. Several runs are compared in one report. Writes Markdown
and the same as a self-contained HTML page, with the figures (PNG) beside.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a Markdown + HTML report (table, plots, samples) of runs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", metavar="RUN_DIR", nargs="+", help="run or output folders")
    parser.add_argument(
        "--output", "-o", default=None, help="report file (default: RUN_DIR/report.md)"
    )


def run(args: argparse.Namespace) -> int:
    from llmopt.report import write_report

    output = Path(args.output) if args.output else Path(args.runs[0]) / "report.md"
    path = write_report(args.runs, output)
    print_summary([Path(r) for r in args.runs])
    print(f"\nreport: {path} (and {path.with_suffix('.html')})")
    return 0


def print_summary(folders: list[Path]) -> None:
    """The headline table of the outputs under `folders` (the report's, as plain text)."""
    from llmopt.report.build import COLUMNS, _row
    from llmopt.report.collect import collect, pareto_front

    entries = collect(folders)
    front = pareto_front(entries)
    keep = [0, 1, 4, 5, 6, 7, 8, 9, 11]  # output, stage, unique, non-zero, disk, ppl, speed, time
    header = [COLUMNS[i] for i in keep]
    rows = [[_row(e, i in front)[k] for k in keep] for i, e in enumerate(entries)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
