"""Argument groups and printing shared by the verbs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llmopt.errors import BadInput


def add_model_argument(parser: argparse.ArgumentParser, name: str = "model") -> None:
    parser.add_argument(
        name,
        metavar=name.upper(),
        help="zoo name (smollm2-135m, tiny-llama, ...), local folder or hub id",
    )


def add_data_arguments(
    parser: argparse.ArgumentParser, flag: str = "--data", default: str | None = "pydoc"
) -> None:
    parser.add_argument(
        flag,
        default=default,
        help="pydoc, a .txt/.jsonl/.parquet file or folder, or hf:NAME[:CONFIG[:SPLIT]]"
        + (f" (default: {default})" if default else ""),
    )
    if flag == "--data":
        parser.add_argument("--text-field", default="text", help="jsonl/parquet/hf text field")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", required=True, help="output checkpoint folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output folder (only once the new one is complete)",
    )


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that control the before/after measurement of a stage."""
    group = parser.add_argument_group("measurement")
    group.add_argument("--eval-data", default="pydoc", help="held-out text for perplexity")
    group.add_argument("--eval-seq-len", type=int, default=None, help="perplexity window")
    group.add_argument(
        "--eval-max-tokens", type=int, default=None, help="score only the first N validation tokens"
    )
    group.add_argument("--no-eval", action="store_true", help="skip before/after measurement")


def eval_config_from_args(args: argparse.Namespace, positions: int):
    """The before/after `EvalConfig` from `add_eval_arguments` flags (and `--speed`).

    Raises:
        BadInput: a flag value is out of range.
    """
    from llmopt.config import build
    from llmopt.evaluate.summary import EvalConfig

    return build(
        EvalConfig,
        data=args.eval_data,
        seq_len=args.eval_seq_len or min(512, positions),
        max_tokens=args.eval_max_tokens,
        speed=args.speed,
    )


def human_count(n: float) -> str:
    """134515008 -> '134.52M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """Bytes in MiB/GiB with two decimals."""
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.2f} MiB"
    return f"{n / 2**10:.1f} KiB"


def print_table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    """Two aligned columns, optionally under a title."""
    if title:
        print(title)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def metric_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """Readable rows for whatever measurements a metrics dict holds."""
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
        rows.append(
            (
                "non-zero",
                f"{human_count(m['nonzero_params'])}  (sparsity {100 * m['sparsity']:.2f}%)",
            )
        )
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
    return rows


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write a JSON file (parents created).

    Raises:
        BadInput: the path cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    except OSError as err:
        raise BadInput(f"--json {path}: cannot write ({err.strerror})") from None
