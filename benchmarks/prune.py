"""Pruning methods side by side: wall time, peak memory and perplexity.

Each (method, pattern) runs in its own process, so its peak resident memory
is its own: load the model, sample calibration blocks, prune (timed), score
perplexity on the held-out validation split. Writes JSON and prints a table.

    .venv/bin/python benchmarks/prune.py                      # the issue's setting
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


def measure_one(args: argparse.Namespace, method: str, pattern: str) -> dict:
    """Prune one copy of the model and measure it (runs in a child process)."""
    import torch

    from llmopt import load_model
    from llmopt.data.corpus import load_corpus
    from llmopt.evaluate.perplexity import evaluate_perplexity
    from llmopt.models import load_tokenizer
    from llmopt.prune import PruneConfig, prepare_pruning, run_pruning

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model)
    result = None
    prune_s = prune_cpu_s = 0.0
    if method != "dense":
        config = PruneConfig(
            method=method,
            sparsity=0.5 if pattern == "unstructured" else None,
            pattern=pattern,
            calib_samples=args.calib_samples,
            calib_seq_len=args.calib_seq_len,
            calib_batch_size=args.calib_batch_size,
            calib_dtype=args.calib_dtype,
        )
        prepared = prepare_pruning(model, tokenizer, config, progress=False)
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = run_pruning(model, prepared)
        prune_s, prune_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    corpus = load_corpus("pydoc", tokenizer, split="validation")
    ppl = evaluate_perplexity(
        model, corpus.ids, seq_len=512, max_tokens=args.eval_max_tokens, progress=False
    )
    return {
        "method": method,
        "pattern": pattern,
        "calib_dtype": args.calib_dtype,
        "prune_s": round(prune_s, 1),
        # CPU seconds of all threads: less distorted than wall time on a shared machine
        "prune_cpu_s": round(prune_cpu_s, 1),
        "sparsity": result.sparsity if result else 0.0,
        "perplexity": round(ppl.perplexity, 3),
        "eval_tokens": ppl.tokens,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
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
    p.add_argument("--calib-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--eval-max-tokens", type=int, default=65536)
    p.add_argument("--no-dense", action="store_true", help="skip the unpruned baseline")
    p.add_argument("--json", default="benchmarks/results/prune.json")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "PATTERN"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args, *args.one)))
        return
    child_args = [a for a in (argv if argv is not None else sys.argv[1:])]
    runs = [] if args.no_dense else [("dense", "-")]
    runs += [(m, p) for p in args.patterns.split(",") for m in args.methods.split(",")]
    rows = []
    for method, pattern in runs:
        cmd = [sys.executable, __file__, *child_args, "--one", method, pattern]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{method:>10} {pattern:>12}  prune {row['prune_s']:7.1f} s "
            f"(cpu {row.get('prune_cpu_s', 0):7.1f} s)  "
            f"peak {row['peak_rss_mib']:6d} MiB  ppl {row['perplexity']:9.3f}  "
            f"sparsity {100 * row['sparsity']:5.1f}%",
            flush=True,
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
