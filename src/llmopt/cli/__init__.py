"""The `llmopt` command.

Verbs that run a stage (eval, prune, share, train, distill, ...) are generated
from the stage registry (`llmopt.cli.stages`): their flags come from the stage's
config. The other verbs (run, report, demo, ...) are one module each, with
`add_arguments` and `run`. The CLI is thin: it parses, calls the library,
prints. Exit status: 0 success, 2 bad input (one line naming the bad value), 1
failure (one line; set LLMOPT_DEBUG=1 for the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from llmopt.errors import BadInput

# Verbs in the order `llmopt --help` lists them: a registered stage, or the module
# llmopt.cli.<verb>.
VERBS: tuple[str, ...] = (
    "eval",
    "prune",
    "slim",
    "quantize",
    "share",
    "train",
    "distill",
    "reconstruct",
    "export",
    "run",
    "report",
    "auto",
    "demo",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is a single line (and exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _verb_module(name: str):
    try:
        return importlib.import_module(f"llmopt.cli.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"llmopt.cli.{name}":
            return None  # a verb of the mission that this version does not ship yet
        raise


def build_parser() -> argparse.ArgumentParser:
    """The full parser with one subcommand per available verb."""
    from llmopt import __version__

    parser = OneLineParser(
        prog="llmopt",
        description="Make language models smaller and cheaper to train, and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"llmopt {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=OneLineParser)
    verbs.required = True
    from llmopt.cli.stages import add_stage_arguments, run_stage_verb
    from llmopt.pipeline.registry import STAGES

    for name in VERBS:
        if name in STAGES:
            cls = STAGES[name]
            doc = sys.modules[cls.__module__].__doc__
            sub = verbs.add_parser(name, help=cls.help, description=doc)
            add_stage_arguments(sub, cls)
            sub.set_defaults(run=lambda args, cls=cls: run_stage_verb(cls, args))
            continue
        module = _verb_module(name)
        if module is None:
            continue
        sub = verbs.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmopt` console script; returns the exit status."""
    if os.environ.get("LLMOPT_DEBUG"):  # `kill -USR1 PID` prints where a stuck run is
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
    args = build_parser().parse_args(argv)
    from llmopt.models.compat import quiet_transformers

    quiet_transformers()
    try:
        return int(args.run(args) or 0)
    except BadInput as err:
        print(f"llmopt {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"llmopt {args.verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("LLMOPT_DEBUG"):
            raise
        print(
            f"llmopt {args.verb}: failed: {type(err).__name__}: {err} "
            "(LLMOPT_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
