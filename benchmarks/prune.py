"""Pruning methods side by side: wall time, peak memory and perplexity.

Each (method, pattern) runs in its own process, so its peak resident memory
is its own: load the model, sample calibration blocks, prune (timed), score
perplexity on the held-out validation split. llmopt runs at its defaults
(`--calib-dtype` only when given). With `--reference-python PATH` (an
interpreter with llm-compressor installed), Wanda and SparseGPT also run
through llm-compressor (`prune_reference.py`) on the very same calibration
tokens; its pruned model is scored here by the same perplexity code, and the
two alternate so machine load hits both alike. Writes JSON and prints a table.

    .venv/bin/python benchmarks/prune.py --reference-python /tmp/llmc/bin/python  # the README table
    .venv/bin/python benchmarks/prune.py --methods wanda --patterns 2:4 --calib-samples 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def _calibration_config(args: argparse.Namespace, method: str, pattern: str):
    from llmopt.prune import PruneConfig

    extra = {"calib_dtype": args.calib_dtype} if args.calib_dtype else {}
    return PruneConfig(
        method=method,
        sparsity=0.5 if pattern == "unstructured" else None,
        pattern=pattern,
        calib_samples=args.calib_samples,
        calib_seq_len=args.calib_seq_len,
        calib_batch_size=args.calib_batch_size,
        **extra,
    )


def _perplexity(model, tokenizer, args: argparse.Namespace):
    from llmopt.data.corpus import load_corpus
    from llmopt.evaluate.perplexity import evaluate_perplexity

    corpus = load_corpus("pydoc", tokenizer, split="validation")
    return evaluate_perplexity(
        model, corpus.ids, seq_len=512, max_tokens=args.eval_max_tokens, progress=False
    )


def measure_one(args: argparse.Namespace, method: str, pattern: str) -> dict:
    """Prune one copy of the model and measure it (runs in a child process)."""
    import torch

    from llmopt import load_model
    from llmopt.models import load_tokenizer
    from llmopt.prune import prepare_pruning, run_pruning

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    result = None
    prune_s = prune_cpu_s = 0.0
    config = _calibration_config(args, method if method != "dense" else "wanda", pattern)
    if method != "dense":
        prepared = prepare_pruning(model, tokenizer, config, progress=False)
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = run_pruning(model, prepared)
        prune_s, prune_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    # Before the evaluation: the high-water mark of loading and pruning, as the reference's.
    peak_mib = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    ppl = _perplexity(model, tokenizer, args)
    return {
        "method": method,
        "pattern": pattern,
        "by": "llmopt",
        "calib_dtype": config.calib_dtype,
        "prune_s": round(prune_s, 2),
        # CPU seconds of all threads: less distorted than wall time on a shared machine
        "prune_cpu_s": round(prune_cpu_s, 1),
        "sparsity": result.sparsity if result else 0.0,
        "perplexity": round(ppl.perplexity, 3),
        "eval_tokens": ppl.tokens,
        "peak_rss_mib": peak_mib,
        "threads": torch.get_num_threads(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    p.add_argument("--patterns", default="unstructured,2:4")
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-seq-len", type=int, default=512)
    p.add_argument("--calib-batch-size", type=int, default=8)
    p.add_argument("--calib-dtype", default=None, choices=["float32", "bfloat16"],
                   help="llmopt's calibration dtype (default: its own default)")  # fmt: skip
    p.add_argument("--reference-python", default=None,
                   help="a python with llm-compressor: compare Wanda and SparseGPT")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--eval-max-tokens", type=int, default=65536)
    p.add_argument("--no-dense", action="store_true", help="skip the unpruned baseline")
    p.add_argument("--json", default="benchmarks/results/prune.json")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "PATTERN"), help=argparse.SUPPRESS)
    p.add_argument("--write-calibration", default=None, help=argparse.SUPPRESS)
    p.add_argument("--score", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def write_calibration(args: argparse.Namespace, path: str) -> None:
    """Save the calibration blocks llmopt samples, for the reference to use (child process)."""
    from safetensors.torch import save_file

    from llmopt.calibrate import load_calibration
    from llmopt.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    config = _calibration_config(args, "wanda", "unstructured")
    calib = load_calibration(config, tokenizer, load_model(args.model), None, progress=False)
    save_file({"ids": calib.ids.contiguous()}, path)


def score(args: argparse.Namespace, folder: str) -> dict:
    """Perplexity and sparsity of a checkpoint pruned elsewhere (child process)."""
    from llmopt.models import load_model, load_tokenizer
    from llmopt.models.arch import ArchAdapter, weight_out_in

    model = load_model(folder)
    weights = [weight_out_in(m) for m in ArchAdapter(model).all_linears().values()]
    zeros = sum(int((w == 0).sum()) for w in weights)
    ppl = _perplexity(model, load_tokenizer(args.model), args)
    total = sum(w.numel() for w in weights)
    return {"perplexity": round(ppl.perplexity, 3), "sparsity": zeros / total}


def _child(argv: list[str], *extra: str) -> dict:
    cmd = [sys.executable, __file__, *argv, *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_reference(args, child_args: list[str], method: str, pattern: str, tmp: Path) -> dict:
    """llm-compressor on the same calibration tokens, scored by llmopt's perplexity code."""
    from llmopt.models import resolve_model

    calib = tmp / "calibration.safetensors"
    if not calib.exists():
        _child(child_args, "--write-calibration", str(calib))
    out = tmp / f"reference-{method}-{pattern.replace(':', 'of')}"
    cmd = [args.reference_python, str(Path(__file__).with_name("prune_reference.py")),
           str(resolve_model(args.model)), str(calib), str(out), "--method", method,
           "--pattern", pattern, "--batch-size", str(args.calib_batch_size),
           "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"reference {method} {pattern} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(_child(child_args, "--score", str(out)))
    return {"method": method, "pattern": pattern, "by": "llm-compressor", **row}


def _print_row(row: dict) -> None:
    print(
        f"{row['by']:>14} {row['method']:>10} {row['pattern']:>12}  prune {row['prune_s']:7.1f} s "
        f"(cpu {row.get('prune_cpu_s', 0):7.1f} s)  peak {row['peak_rss_mib']:6d} MiB  "
        f"ppl {row['perplexity']:9.3f}  sparsity {100 * row['sparsity']:5.1f}%",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    import os
    import tempfile

    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args, *args.one)))
        return
    if args.write_calibration:
        write_calibration(args, args.write_calibration)
        print("{}")
        return
    if args.score:
        print(json.dumps(score(args, args.score)))
        return
    child_args = [a for a in (argv if argv is not None else sys.argv[1:])]
    runs = [] if args.no_dense else [("dense", "-")]
    runs += [(m, p) for p in args.patterns.split(",") for m in args.methods.split(",")]
    rows, ratios = [], []
    load = {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="llmopt-prune-bench-") as tmp:
        for turn, (method, pattern) in enumerate(runs):
            sides = ["llmopt"]
            if args.reference_python and method in ("wanda", "sparsegpt"):
                sides = ["llmopt", "reference"] if turn % 2 else ["reference", "llmopt"]
            got = {}
            for side in sides:
                if side == "llmopt":
                    got[side] = _child(child_args, "--one", method, pattern)
                else:
                    got[side] = run_reference(args, child_args, method, pattern, Path(tmp))
                rows.append(got[side])
                _print_row(got[side])
            if len(got) == 2:
                ratio = got["reference"]["prune_s"] / max(got["llmopt"]["prune_s"], 0.01)
                ratios.append({"method": method, "pattern": pattern, "speedup": ratio})
                print(f"{'ratio':>14} {method:>10} {pattern:>12}  {ratio:.2f}x", flush=True)
    load["end"] = os.getloadavg()
    print(f"load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at the end")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "rows": rows, "speedups": ratios, "load_average": load}
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
