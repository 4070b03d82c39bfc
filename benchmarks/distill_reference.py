"""`llmopt distill`'s loop against a plain PyTorch distillation loop (used by distill.py).

The reference is what one would write by hand: the teacher forward under
`inference_mode`, the full logits of both models, forward KL at temperature T
times T^2 plus the hard-label cross-entropy, `torch.optim.AdamW` at its
defaults, gradient clipping. Both sides train the same student (smollm2-135m
with every other layer removed) from the same teacher (smollm2-135m) on the
same packed pydoc rows in the same order, with the same loss, lr, steps and
precision (bf16: the teacher cast to bf16, the student under autocast, as
llmopt does). Each run is a fresh subprocess (its own peak memory); the two
alternate so machine load hits both alike. Reports median tokens/s of the
steps after the first, the ratio, peak memory and both loss curves.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

TEACHER = "smollm2-135m"


def _models_and_rows(args, rows_needed: int):
    import torch

    from llmopt.data import load_corpus
    from llmopt.distill.student import drop_every_other_layer
    from llmopt.models import load_model, load_tokenizer
    from llmopt.train.data import Layout, RowSource, packed_rows

    tokenizer = load_tokenizer(TEACHER)
    teacher = load_model(TEACHER)
    student = drop_every_other_layer(load_model(TEACHER)).train()
    corpus = load_corpus("pydoc", tokenizer, split="train")
    source = RowSource(packed_rows(corpus.ids, args.seq_len), pad_id=0, seed=0)
    source.configure(Layout(rows_needed, 1))
    rows = source.next_step()[0]["input_ids"]  # the rows llmopt's first steps visit, in order
    torch.manual_seed(0)
    return teacher, student, rows, len(tokenizer.get_vocab())


def _peak_mb() -> float:
    import resource

    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_reference(args) -> dict:
    """The plain loop; returns per-step wall times and losses."""
    import torch
    import torch.nn.functional as F

    teacher, student, rows, _ = _models_and_rows(args, args.steps * args.micro_batch_size)
    bf16 = args.precision == "bf16"
    teacher.eval().requires_grad_(False)
    if bf16:
        teacher.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    t, alpha = args.temperature, args.alpha
    times, losses = [], []
    for batch in rows.split(args.micro_batch_size):
        start = time.perf_counter()
        with torch.inference_mode():
            teacher_logits = teacher(input_ids=batch).logits[:, :-1].float()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = student(input_ids=batch).logits[:, :-1].float()
        vocab = logits.shape[-1]
        log_q = F.log_softmax(logits / t, dim=-1).reshape(-1, vocab)
        log_p = F.log_softmax(teacher_logits / t, dim=-1).reshape(-1, vocab)
        kd = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean") * t * t
        ce = F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        loss = alpha * kd + (1 - alpha) * ce
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        times.append(time.perf_counter() - start)
    return {"step_times": times, "losses": losses}


def worker_llmopt(args) -> dict:
    """llmopt's trainer with its distillation objective, at its defaults but for the
    hyper-parameters the reference shares (constant lr, no decay, AdamW betas)."""
    import torch

    from llmopt.distill.losses import LossSpec
    from llmopt.distill.objective import DistillObjective
    from llmopt.train import Callback, TrainConfig, run_training
    from llmopt.train.data import RowSource

    teacher, student, rows, vocab = _models_and_rows(args, args.steps * args.micro_batch_size)
    marks: list[float] = []

    class Clock(Callback):
        def on_step_start(self, trainer) -> None:
            marks.append(time.perf_counter())

        def after_optimizer_step(self, trainer) -> None:
            marks.append(time.perf_counter())

    source = RowSource(list(rows.unbind(0)), pad_id=0, seed=0)
    source._order = lambda epoch: torch.arange(len(source.rows))  # keep the given order
    config = TrainConfig(steps=args.steps, micro_batch_size=args.micro_batch_size,
                         seq_len=args.seq_len, lr=args.lr, warmup=0, min_lr_ratio=1.0,
                         weight_decay=0.0, betas=(0.9, 0.999), max_grad_norm=1.0,
                         precision=args.precision, progress=False,
                         log_every=args.steps)  # fmt: skip
    spec = LossSpec(divergence="kl", temperature=args.temperature, alpha=args.alpha)
    objective = DistillObjective(spec, vocab, teacher=teacher)
    result = run_training(student, config, source, objective, callbacks=[Clock()])
    return {
        "step_times": [b - a for a, b in zip(marks[::2], marks[1::2], strict=True)],
        "losses": [r["loss"] for r in result.history],
    }


WORKERS = {"reference": worker_reference, "llmopt": worker_llmopt}


def run_worker(args) -> None:
    """Child process: one run, one RESULT line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = WORKERS[args.worker](args)
    out["peak_memory_mb"] = _peak_mb()
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(args, worker: str, precision: str) -> dict:
    command = [sys.executable, sys.argv[0], "--worker", worker, "--precision", precision,
               "--versus-reference",
               "--steps", str(args.steps), "--micro-batch-size", str(args.micro_batch_size),
               "--seq-len", str(args.seq_len), "--lr", str(args.lr), "--alpha", str(args.alpha),
               "--temperature", str(args.temperature), "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{worker} {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def _summary(runs: list[dict], tokens_per_step: int) -> dict:
    steady = [t for r in runs for t in r["step_times"][1:]]
    median = statistics.median(steady)
    return {
        "tokens_per_s": tokens_per_step / median,
        "median_step_s": median,
        "per_run_median_step_s": [statistics.median(r["step_times"][1:]) for r in runs],
        "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in runs),
        "losses": runs[-1]["losses"],
    }


def compare(args) -> dict:
    """Alternate llmopt and reference runs per precision; medians, ratios, loss curves."""
    import os

    tokens_per_step = args.micro_batch_size * args.seq_len
    results: dict = {"load_average_at_start": os.getloadavg()}
    for precision in args.precisions.split(","):
        runs: dict[str, list[dict]] = {"llmopt": [], "reference": []}
        for repeat in range(args.repeats):
            order = ("llmopt", "reference") if repeat % 2 == 0 else ("reference", "llmopt")
            for worker in order:
                print(f"[{precision}] {worker} run {repeat + 1}/{args.repeats}", flush=True)
                runs[worker].append(_spawn(args, worker, precision))
        row = {w: _summary(r, tokens_per_step) for w, r in runs.items()}
        ours, ref = row["llmopt"], row["reference"]
        row["speedup"] = ours["tokens_per_s"] / ref["tokens_per_s"]
        row["max_loss_diff"] = max(
            abs(a - b) for a, b in zip(ours["losses"], ref["losses"], strict=True)
        )
        results[precision] = row
    results["load_average_at_end"] = os.getloadavg()
    return results


def print_table(results: dict, precisions: list[str]) -> None:
    """The README table: tokens/s, peak memory, ratio and loss agreement per precision."""
    print(f"{'precision':<10}{'loop':<11}{'tokens/s':>10}{'peak MiB':>10}{'final loss':>12}")
    for p in precisions:
        for w in ("llmopt", "reference"):
            r = results[p][w]
            print(f"{p:<10}{w:<11}{r['tokens_per_s']:>10.0f}{r['peak_memory_mb']:>10.0f}"
                  f"{r['losses'][-1]:>12.4f}")  # fmt: skip
        print(f"{p:<10}{'ratio':<11}{results[p]['speedup']:>10.2f}x  "
              f"(max |loss diff| over steps {results[p]['max_loss_diff']:.2e})")  # fmt: skip
    print(f"load average {results['load_average_at_start'][0]:.1f} at the start, "
          f"{results['load_average_at_end'][0]:.1f} at the end")  # fmt: skip
