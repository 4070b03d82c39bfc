"""Distillation side by side: hard labels vs a teacher, and training from an offline cache.

Teacher: smollm2-135m (30 layers). Student: the same model with every other
decoder layer removed (15 layers, 0, 2, ..., 28), which costs it most of its
quality. Then, with the same steps, rows, tokens, learning rate and schedule:

  (a) hard-label fine-tuning (next-token cross-entropy, llmopt's LMObjective);
  (b) distillation from the online teacher (`DistillObjective`, forward KL);
  (c) the offline top-k cache: made once (timed), then (b)'s training again
      from the cache, without the teacher in memory.

Each run is its own child process so that its peak memory (resident
high-water mark on CPU, max allocated on CUDA) is its own. Validation
perplexity is the held-out pydoc split (first --eval-tokens tokens, windows of
--eval-seq-len), before and after. Writes JSON and prints a table.

    .venv/bin/python benchmarks/distill.py                    # ~35 min on 2 busy shared CPU cores
    .venv/bin/python benchmarks/distill.py --steps 200 --micro-batch-size 16 --seq-len 512

`--versus-reference` times instead llmopt's distillation loop against a plain
PyTorch loop written in `distill_reference.py` (same student, teacher, rows,
loss, steps and precision; alternating subprocesses; medians and ratios):

    .venv/bin/python benchmarks/distill.py --versus-reference --steps 6 \
        --micro-batch-size 4 --seq-len 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TEACHER = "smollm2-135m"


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--loss", default="kl", choices=["kl", "reverse-kl", "jsd"])
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--k", type=int, default=64, help="top-k of the offline cache")
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--eval-seq-len", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--workdir", default=None, help="student and cache folder (default: temp)")
    p.add_argument("--json", default="benchmarks/results/distill.json")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)
    p.add_argument("--versus-reference", action="store_true",
                   help="time llmopt against the plain PyTorch loop instead")  # fmt: skip
    p.add_argument("--precisions", default="fp32,bf16", help="--versus-reference only")
    p.add_argument("--repeats", type=int, default=3, help="--versus-reference: runs per side")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def make_student(dest: Path) -> None:
    """Save smollm2-135m with every other decoder layer removed (a plain HF checkpoint)."""
    from llmopt.distill.student import drop_every_other_layer
    from llmopt.models import load_model, load_tokenizer

    drop_every_other_layer(load_model(TEACHER)).save_pretrained(dest)
    load_tokenizer(TEACHER).save_pretrained(dest)


def _perplexity(model, args) -> float:
    from llmopt.data import load_corpus
    from llmopt.evaluate.perplexity import evaluate_perplexity
    from llmopt.models import load_tokenizer

    ids = load_corpus("pydoc", load_tokenizer(TEACHER), split="validation").ids
    model.eval()
    return evaluate_perplexity(
        model, ids, args.eval_seq_len, max_tokens=args.eval_tokens, progress=False
    ).perplexity


def _train_config(args):
    from llmopt.config import build
    from llmopt.train.config import TrainConfig

    return build(
        TrainConfig,
        steps=args.steps,
        micro_batch_size=args.micro_batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup=args.warmup,
        device=args.device,
        precision=args.precision,
        log_every=max(1, args.steps // 4),
        progress=False,
    )


def _peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _objective(args, part: str, workdir: Path):
    """(objective, extra facts) for one part of the benchmark."""
    from llmopt.distill.losses import LossSpec
    from llmopt.distill.objective import DistillObjective
    from llmopt.distill.teacher import open_cache_for, read_cache_meta
    from llmopt.models import load_model, load_tokenizer
    from llmopt.train.objective import LMObjective

    spec = LossSpec(divergence=args.loss, temperature=args.temperature, alpha=args.alpha)
    vocab = len(load_tokenizer(TEACHER).get_vocab())
    if part == "hard":
        return LMObjective(), {}
    if part == "distill":
        teacher = load_model(TEACHER)
        facts = {"teacher_ppl": _perplexity(teacher, args)}
        return DistillObjective(spec, vocab, teacher=teacher), facts
    from llmopt.distill.teacher import visited_rows

    meta = read_cache_meta(workdir / "cache")
    rows = _rows(args)
    needed = visited_rows(len(rows), args.micro_batch_size, args.steps, 0)
    cache = open_cache_for(
        workdir / "cache", rows, args.temperature, meta.vocab_fingerprint, needed=needed
    )
    return DistillObjective(spec, vocab, cache=cache), {}


def _rows(args):
    from llmopt.models import load_tokenizer
    from llmopt.train.data import build_source

    return build_source("pydoc", load_tokenizer(TEACHER), args.seq_len, True, 0).rows


def run_part(args, part: str, workdir: Path) -> dict[str, Any]:
    """One child process: train the student one way (or make the cache) and measure."""
    import torch

    from llmopt.models import load_model, load_tokenizer
    from llmopt.runtime import pick_device
    from llmopt.train.data import build_source
    from llmopt.train.trainer import run_training

    device = pick_device(args.device)
    cfg = _train_config(args)
    if part == "cache":
        return make_cache(args, workdir, cfg)
    if part == "speed":
        return step_speed(args, workdir, cfg)
    objective, facts = _objective(args, part, workdir)
    data = build_source("pydoc", load_tokenizer(TEACHER), cfg.seq_len, True, cfg.seed)
    torch.manual_seed(0)
    student = load_model(workdir / "student")
    before = _perplexity(student, args)
    result = run_training(student, cfg, data, objective, (), None, str(workdir / "student"))
    after = _perplexity(result.model, args)
    return {
        "part": part,
        "ppl_before": before,
        "ppl_after": after,
        "train_wall_s": result.wall_time_s,
        "tokens": result.tokens,
        "tokens_per_s": result.tokens / result.wall_time_s,
        "peak_memory_mb": _peak_memory_mb(device),
        "final_loss": result.history[-1]["loss"],
        "curve": result.history,
        **facts,
    }


def step_speed(args, workdir: Path, cfg, repeats: int = 5) -> dict[str, Any]:
    """Seconds per training step of each objective, interleaved in one process.

    Separate runs on a shared machine see different load; alternating the
    three objectives step by step and taking medians compares them under the
    same load.
    """
    import statistics

    import torch

    from llmopt.models import load_model, load_tokenizer
    from llmopt.train.data import Layout, build_source

    objectives = {p: _objective(args, p, workdir)[0] for p in ("hard", "distill", "cached")}
    objectives["distill"].setup(None, torch.device("cpu"), None)
    student = load_model(workdir / "student").train()
    data = build_source("pydoc", load_tokenizer(TEACHER), cfg.seq_len, True, cfg.seed)
    data.configure(Layout(cfg.micro_batch_size, 1))
    times: dict[str, list[float]] = {p: [] for p in objectives}
    for _ in range(repeats):
        batch = data.next_step()[0]
        for part, objective in objectives.items():
            t0 = time.perf_counter()
            objective(student, batch).loss_sum.backward()
            times[part].append(time.perf_counter() - t0)
            student.zero_grad(set_to_none=True)
    median = {p: statistics.median(t) for p, t in times.items()}
    return {
        "part": "speed",
        "repeats": repeats,
        "step_s_median": median,
        "step_s_all": times,
        "online_over_cached": median["distill"] / median["cached"],
        "online_over_hard": median["distill"] / median["hard"],
    }


def make_cache(args, workdir: Path, cfg) -> dict[str, Any]:
    """Make the top-k cache for exactly the rows the runs visit; time it and size it."""
    import torch

    from llmopt.distill.teacher import build_teacher_cache, freeze_teacher, visited_rows
    from llmopt.distill.vocab import vocabulary_fingerprint
    from llmopt.models import load_model, load_tokenizer
    from llmopt.runtime import pick_device
    from llmopt.train.precision import Precision, resolve_precision

    device = pick_device(args.device)
    precision = Precision(resolve_precision(cfg.precision, device), device)
    tokenizer = load_tokenizer(TEACHER)
    rows = _rows(args)
    teacher = freeze_teacher(load_model(TEACHER), device, precision.dtype)
    dest = workdir / "cache"
    dest.mkdir()
    indices = visited_rows(len(rows), cfg.micro_batch_size, cfg.steps, cfg.seed)
    t0 = time.perf_counter()
    meta = build_teacher_cache(
        teacher, rows, dest, indices=indices, teacher_name=TEACHER, k=args.k,
        temperature=args.temperature, vocab_size=len(tokenizer.get_vocab()),
        vocab_fingerprint=vocabulary_fingerprint(tokenizer), pad_id=tokenizer.pad_token_id,
        batch_size=cfg.micro_batch_size, progress=False, autocast=precision.autocast,
    )  # fmt: skip
    wall = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in dest.iterdir())
    from safetensors.torch import load_file

    rest = torch.cat([load_file(f)["rest"] for f in sorted(dest.glob("*.safetensors"))])
    return {
        "part": "cache",
        "build_wall_s": wall,
        "positions": meta.tokens,
        "disk_bytes": disk,
        "bytes_per_token": disk / meta.tokens,
        "k": meta.k,
        "mean_mass_outside_topk": float(rest.exp().mean()),
        "peak_memory_mb": _peak_memory_mb(device),
    }


def _child(args, part: str, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{part}.json"
    argv = [sys.executable, __file__, "--part", part, "--workdir", str(workdir)]
    for key in ("steps", "micro_batch_size", "seq_len", "lr", "warmup", "loss", "temperature",
                "alpha", "k", "eval_tokens", "eval_seq_len", "device", "precision"):  # fmt: skip
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    argv += ["--json", str(out)]
    print(f"[{part}] running ...", flush=True)
    subprocess.run(argv, check=True)
    return json.loads(out.read_text())


def _table(results: dict[str, dict[str, Any]]) -> None:
    hard, kd, cached, cache = (results[k] for k in ("hard", "distill", "cached", "cache"))
    print(f"\nteacher {TEACHER}: perplexity {kd['teacher_ppl']:.2f}")
    print(
        f"{'run':<22}{'ppl before':>11}{'ppl after':>11}{'wall s':>9}{'tok/s':>9}{'peak MiB':>10}"
    )
    for name, r in (("(a) hard labels", hard), ("(b) distill, online", kd),
                    ("(c) distill, cached", cached)):  # fmt: skip
        print(
            f"{name:<22}{r['ppl_before']:>11.2f}{r['ppl_after']:>11.2f}"
            f"{r['train_wall_s']:>9.1f}{r['tokens_per_s']:>9.0f}{r['peak_memory_mb']:>10.0f}"
        )
    margin = hard["ppl_after"] - kd["ppl_after"]
    print(
        f"distillation vs hard labels: {kd['ppl_after']:.2f} vs {hard['ppl_after']:.2f} "
        f"({margin:+.2f} ppl, {100 * margin / hard['ppl_after']:.1f}% lower)"
    )
    speed = results["speed"]["step_s_median"]
    print(
        f"cache: k={cache['k']}, {cache['bytes_per_token']:.0f} bytes/token on disk, "
        f"{100 * cache['mean_mass_outside_topk']:.1f}% of the teacher's mass outside the "
        f"top k on average, made in {cache['build_wall_s']:.1f} s"
    )
    print(
        f"seconds per step, interleaved medians: hard {speed['hard']:.2f}, online teacher "
        f"{speed['distill']:.2f}, cached {speed['cached']:.2f}; the cache trains "
        f"{speed['distill'] / speed['cached']:.2f}x as fast as the online teacher"
    )


def versus_reference(args) -> int:
    """The llmopt-vs-plain-loop table (see distill_reference.py)."""
    import distill_reference as ref

    if args.worker:
        ref.run_worker(args)
        return 0
    results = ref.compare(args)
    precisions = args.precisions.split(",")
    ref.print_table(results, precisions)
    settings = {k: v for k, v in vars(args).items() if k not in ("part", "json", "workdir")}
    path = Path(args.json).with_name("distill_vs_reference.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, **results}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


def main() -> int:
    args = _parse()
    if args.versus_reference or args.worker:
        return versus_reference(args)
    if args.part:
        result = run_part(args, args.part, Path(args.workdir))
        Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="llmopt-distill-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if not (workdir / "student").exists():
            make_student(workdir / "student")
        results = {part: _child(args, part, workdir) for part in ("hard", "distill", "cache")}
        results["cached"] = _child(args, "cached", workdir)
        results["speed"] = _child(args, "speed", workdir)
    _table(results)
    settings = {k: v for k, v in vars(args).items() if k not in ("part", "json", "workdir")}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"settings": settings, **results}, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
