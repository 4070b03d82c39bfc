"""Search for the best model under a budget: which techniques, in which order, with which
settings.

The budget is a fraction of the input model's cost: params=0.6 (unique parameters),
nonzero=0.5 (non-zero parameters), bytes=0.4 (weight files on disk) or latency=0.7
(decode latency measured on this machine). Candidates are recipes of slimming,
sharing, pruning and quantization stages; all are screened by their KL to the input
on held-out text, the best ones get growing recoveries (distillation from the input)
in successive-halving rounds, and the finalists the full one. DIR receives the
winner (DIR/model), the recipe that makes it (DIR/recipe.yaml, which `llmopt run`
reproduces), a report of every candidate (DIR/report.md/.html) and the search's state:
run the same command again to resume an interrupted search.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from pydantic import create_model

from llmopt.auto.config import AutoConfig
from llmopt.config import StrictModel
from llmopt.errors import BadInput

HELP = "search for the best model under a budget (params, nonzero, bytes or latency)"

BY_HAND = ("time_limit", "recovery")
"""AutoConfig fields whose flags take another form (15m; KEY=VALUE)."""

_UNITS = {"s": 1, "m": 60, "h": 3600}


def _generated_flags() -> type[StrictModel]:
    fields = {
        name: (field.annotation, field)
        for name, field in AutoConfig.model_fields.items()
        if name not in BY_HAND
    }
    model = create_model("AutoFlags", __base__=StrictModel, **fields)
    model.__doc__ = "Search settings"
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmopt.cli.flags import add_config_arguments

    parser.add_argument(
        "model", metavar="MODEL", help="zoo name (smollm2-135m, tiny-llama, ...), folder or hub id"
    )
    parser.add_argument(
        "--budget",
        required=True,
        metavar="KIND=FRACTION",
        help="params=P | nonzero=N | bytes=B | latency=L: a fraction of the input model's",
    )
    parser.add_argument("--output", "-o", required=True, help="search folder (resumable)")
    parser.add_argument(
        "--time-limit",
        default=None,
        metavar="DURATION",
        help="start no new candidate after this long (e.g. 900, 90s, 15m, 1h30m); "
        "the best feasible model so far is returned",
    )
    parser.add_argument(
        "--recovery",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a distill key for every recovery instead of its default (e.g. seq_len=256); "
        "repeatable",
    )
    add_config_arguments(parser, _generated_flags())


def parse_duration(text: str) -> float:
    """Seconds in '900', '90s', '15m', '1h30m', '2.5h'.

    Raises:
        BadInput: not a positive duration.
    """
    cleaned = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d*)?", cleaned):
        seconds = float(cleaned)
    else:
        parts = re.findall(r"(\d+(?:\.\d*)?)([smh])", cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise BadInput(f"--time-limit {text!r}: expected seconds or e.g. 90s, 15m, 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise BadInput(f"--time-limit {text!r}: must be longer than zero")
    return seconds


def parse_recovery(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` items (values in YAML syntax) as a mapping.

    Raises:
        BadInput: an item without '='.
    """
    from llmopt.pipeline.recipe import parse_yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--recovery {item!r}: expected KEY=VALUE, e.g. seq_len=256")
        out[key.strip().replace("-", "_")] = parse_yaml(value)
    return out


def run(args: argparse.Namespace) -> int:
    from llmopt.auto import SearchFailed, auto_search, parse_budget
    from llmopt.cli.flags import config_values, flag_of
    from llmopt.config import build

    budget = parse_budget(args.budget)
    values = config_values(args)
    if args.time_limit is not None:
        values["time_limit"] = parse_duration(args.time_limit)
    values["recovery"] = parse_recovery(args.recovery)
    config = build(AutoConfig, values, name_of=flag_of)
    try:
        result = auto_search(args.model, args.output, budget, config)
    except SearchFailed as failed:
        print(f"llmopt auto: {failed}")
        return 1
    _print(result)
    return 0


def _print(result) -> None:
    from llmopt.cli.stages import print_table

    winner, verified = result.winner, result.verified
    rows = [
        ("winner", f"{winner['label']} ({winner['candidate']})"),
        ("cost", f"{verified['cost']:.3f} of the input's (budget {verified['budget']})"),
        ("held-out perplexity", f"{winner['perplexity']:.3f} (KL to the input {winner['kl']:.4f})"),
        ("recovery tokens", f"{winner['recovery_tokens']:,}"),
        (
            "candidates",
            f"{sum(len(r) for r in result.rounds[:1])} screened, "
            f"{len(result.rounds[-1])} finalists",
        ),
        ("model", str(result.model)),
        ("recipe", str(result.recipe)),
        ("report", f"{result.report} (and {result.report.with_suffix('.html').name})"),
    ]
    if not result.complete:
        rows.append(("note", "the time limit stopped the search before its last round"))
    print_table(rows, title=f"llmopt auto -> {result.folder}")
