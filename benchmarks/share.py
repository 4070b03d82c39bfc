"""Cross-layer sharing side by side: size, memory and perplexity per plan and initialisation.

1. Sweep (one process): for each K, plan and initialisation, share a fresh
   copy of the model and score perplexity on the held-out pydoc split right
   after sharing. Unique parameters depend only on K.
2. Memory and disk (one child process per K, and one for the original): save
   the shared model in the `shared` layout, measure the folder, load it back
   with llmopt (sharing restored) and time prefill/decoding; the peak is the
   child's resident high-water mark during inference. glibc is told to
   return freed blocks at once (MALLOC_MMAP_THRESHOLD_), so the peak is what
   the shared model holds, not what loading it once allocated.
3. Recovery: for the best configuration at each K in --recover-ks, run the
   real `llmopt share` and a short `llmopt distill` from the original model,
   and score the result the same way.

    .venv/bin/python benchmarks/share.py                           # the issue's setting
    .venv/bin/python benchmarks/share.py --ks 10 --inits average --recover-ks ''
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _perplexity(model, ids, args: argparse.Namespace) -> float:
    from llmopt.evaluate.perplexity import evaluate_perplexity

    return evaluate_perplexity(
        model, ids, seq_len=args.seq_len, max_tokens=args.eval_max_tokens, progress=False
    ).perplexity


def sweep(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Perplexity right after sharing, for every (K, plan, init) that applies."""
    import torch

    from llmopt.data.corpus import load_corpus
    from llmopt.errors import BadInput
    from llmopt.evaluate import model_footprint
    from llmopt.models import load_model, load_tokenizer
    from llmopt.models.arch import ArchAdapter
    from llmopt.share.apply import share_layers
    from llmopt.share.plan import make_plan

    torch.manual_seed(0)
    original = load_model(args.model)
    ids = load_corpus("pydoc", load_tokenizer(args.model), split="validation").ids
    n = ArchAdapter(original).num_layers
    rows = [
        {
            "k": n,
            "strategy": "original",
            "init": "-",
            "unique_params": model_footprint(original).unique_params,
            "perplexity": _perplexity(original, ids, args),
        }
    ]
    print(_row_text(rows[0]), flush=True)
    for k in args.ks:
        for strategy in args.strategies:
            for init in args.inits:
                try:
                    plan = make_plan(n, k, strategy)
                except BadInput as err:
                    print(f"  skip K={k} {strategy}: {err}", flush=True)
                    break
                model = copy.deepcopy(original)
                t0 = time.perf_counter()
                share_layers(model, plan, init=init, lora_rank=args.lora_rank)
                row = {
                    "k": k,
                    "strategy": strategy,
                    "init": init,
                    "lora_rank": args.lora_rank,
                    "share_s": round(time.perf_counter() - t0, 2),
                    "unique_params": model_footprint(model).unique_params,
                    "perplexity": _perplexity(model, ids, args),
                }
                rows.append(row)
                print(_row_text(row), flush=True)
                del model
                gc.collect()
    return rows


def memory_child(args: argparse.Namespace, k: int) -> dict[str, Any]:
    """Save at K (0: the original), reload with llmopt, measure disk and inference peak."""
    from llmopt import load_model
    from llmopt.evaluate import checkpoint_bytes, measure_speed, model_footprint
    from llmopt.models import resolve_model
    from llmopt.models.arch import ArchAdapter
    from llmopt.provenance import StageRecord, write_record
    from llmopt.share.apply import share_layers
    from llmopt.share.plan import make_plan
    from llmopt.share.storage import save_shared

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(resolve_model(args.model))
        if k:
            model = load_model(args.model)
            share_layers(model, make_plan(ArchAdapter(model).num_layers, k, "cycle"))
            folder = Path(tmp) / "shared"
            folder.mkdir()
            fmt, _ = save_shared(model, folder, "shared")
            write_record(folder, StageRecord(stage="share", source=args.model, format=fmt))
            del model
            gc.collect()
        on_disk = checkpoint_bytes(folder)["weight_bytes"]
        model = load_model(folder)
        speed = measure_speed(model, batch_size=1, seq_len=args.seq_len, decode_tokens=16)
        return {
            "k": k,
            "unique_params": model_footprint(model).unique_params,
            "weight_bytes": on_disk,
            "peak_memory_mib": round(speed.peak_memory_mb),
            "prefill_tokens_per_s": round(speed.prefill_tokens_per_s),
            "decode_ms_per_token": round(speed.decode_ms_per_token, 2),
        }


def _child(args: argparse.Namespace, k: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--model", args.model, "--seq-len", str(args.seq_len)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(
        [*cmd, "--memory-child", str(k)], check=True, capture_output=True, text=True, env=env
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def recover(args: argparse.Namespace, best: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run `llmopt share` then a short `llmopt distill` from the original for one configuration."""
    from llmopt.cli import main

    shared, recovered = work / f"k{best['k']}-shared", work / f"k{best['k']}-recovered"
    evaluation = [
        "--eval-max-tokens",
        str(args.eval_max_tokens),
        "--eval-seq-len",
        str(args.seq_len),
    ]
    code = main(
        ["share", args.model, "-k", str(best["k"]), "--strategy", best["strategy"],
         "--init", best["init"], "--save-format", "shared", "--no-eval", "-o", str(shared),
         "--overwrite"]
    )  # fmt: skip
    if code:
        raise RuntimeError(f"llmopt share exited {code}")
    t0 = time.perf_counter()
    code = main(
        ["distill", str(shared), "--teacher", args.model, "--steps", str(args.recover_steps),
         "--seq-len", str(args.recover_seq_len), "--micro-batch-size", "4", "--lr", "3e-4",
         "--warmup", "5", "--no-progress", "-o", str(recovered), "--overwrite", *evaluation]
    )  # fmt: skip
    if code:
        raise RuntimeError(f"llmopt distill exited {code}")
    record = json.loads((recovered / "llmopt.json").read_text())
    return {
        **{key: best[key] for key in ("k", "strategy", "init")},
        "perplexity_shared": best["perplexity"],
        "perplexity_before_distill": record["metrics"]["before"]["perplexity"],
        "perplexity_recovered": record["metrics"]["after"]["perplexity"],
        "unique_params_recovered": record["metrics"]["after"]["unique_params"],
        "format": record["format"],
        "steps": args.recover_steps,
        "tokens_per_step": 4 * args.recover_seq_len,
        "distill_s": round(time.perf_counter() - t0, 1),
    }


def _row_text(row: dict[str, Any]) -> str:
    return (
        f"K={row['k']:>3} {row['strategy']:>9} {row['init']:>9}  "
        f"unique {row['unique_params'] / 1e6:7.2f}M  ppl {row['perplexity']:12.2f}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    names = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--ks", type=ints, default=[15, 10, 6])
    p.add_argument("--strategies", type=names, default=["cycle", "sequence", "adjacent"])
    p.add_argument("--inits", type=names, default=["average", "first", "stepwise"])
    p.add_argument("--lora-rank", type=int, default=0, help="per-layer delta rank in the sweep")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-max-tokens", type=int, default=4096)
    p.add_argument("--recover-ks", type=ints, default=[15, 10])
    p.add_argument("--recover-steps", type=int, default=40)
    p.add_argument("--recover-seq-len", type=int, default=256)
    p.add_argument("--work-dir", default=None, help="where recovery writes its checkpoints")
    p.add_argument("--json", default="benchmarks/results/share.json")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args, args.memory_child)))
        return
    from llmopt.models.compat import quiet_transformers

    quiet_transformers()
    result: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if k != "memory_child"}}
    result["sweep"] = sweep(args)
    result["memory"] = []
    for k in [0, *args.ks]:
        row = _child(args, k)
        result["memory"].append(row)
        print(
            f"K={k or 'orig':>4}  unique {row['unique_params'] / 1e6:7.2f}M  "
            f"disk {row['weight_bytes'] / 2**20:7.1f} MiB  peak {row['peak_memory_mib']:5d} MiB  "
            f"decode {row['decode_ms_per_token']:6.1f} ms/token",
            flush=True,
        )
    result["recovery"] = []
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="llmopt-share-bench-"))
    for k in args.recover_ks:
        candidates = [r for r in result["sweep"] if r["k"] == k and r["strategy"] != "original"]
        if not candidates:
            continue
        best = min(candidates, key=lambda r: r["perplexity"])
        row = recover(args, best, work)
        result["recovery"].append(row)
        print(
            f"recover K={k} {best['strategy']}/{best['init']}: ppl {row['perplexity_shared']:.2f}"
            f" -> {row['perplexity_recovered']:.2f} after {row['steps']} distillation steps"
            f" ({row['distill_s']:.0f} s)",
            flush=True,
        )
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
