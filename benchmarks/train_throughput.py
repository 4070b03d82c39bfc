"""llmopt's trainer against the Hugging Face `Trainer`: same model, data, batch, precision.

Both train the same model (`smollm2-135m` by default; `--model toy` is a
seeded ~18M-parameter Llama built from a config) on the same packed `pydoc`
rows in the same order, with the same micro-batch, accumulation, optimizer
(AdamW, constant lr, clipping) and precision, each at its own defaults
otherwise (llmopt: fused head + loss, fused AdamW; HF: `adamw_torch`). Every
run is a fresh subprocess (so peak memory is its own), and the two trainers
alternate so that machine load hits both alike. Reports median tokens/s of
the steady-state steps (the first step is a warm-up), the ratio, peak memory
(RSS high-water mark on CPU, allocated on CUDA), and both loss curves, which
must agree. `auto` is what `--precision auto` resolves to here.

    .venv/bin/python benchmarks/train_throughput.py                 # the README table
    .venv/bin/python benchmarks/train_throughput.py --model toy --seq-len 128
    .venv/bin/python benchmarks/train_throughput.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

TOY = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
    num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
)  # fmt: skip


def build_model_and_rows(args, rows_needed: int):
    """The benchmark model and `rows_needed` packed pydoc rows, in llmopt's order."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmopt.data import load_corpus
    from llmopt.models import load_model, load_tokenizer
    from llmopt.train.data import Layout, RowSource, packed_rows

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(args.seed)
    if args.model == "toy":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **TOY)).float()
    else:
        model = load_model(args.model, dtype=torch.float32)
    corpus = load_corpus("pydoc", tokenizer, split="train")
    source = RowSource(packed_rows(corpus.ids, args.seq_len), pad_id=0, seed=args.seed)
    source.configure(Layout(rows_needed, 1))
    ordered = source.next_step()[0]["input_ids"]  # the exact rows, in the order llmopt uses
    return model, ordered


def machine() -> dict:
    """What the numbers were measured on, and how busy it was when the run started."""
    import os
    import platform

    import torch

    from llmopt.train.precision import describe_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "auto_precision": describe_precision("auto", device),
    }


def peak_memory_mb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker_llmopt(args) -> dict:
    """One llmopt run; per-step wall times measured by a callback."""
    import torch

    from llmopt.train import Callback, TrainConfig, run_training
    from llmopt.train.data import RowSource

    model, rows = build_model_and_rows(args, args.steps * args.micro * args.accum)
    times: list[float] = []

    class Clock(Callback):
        def after_optimizer_step(self, trainer) -> None:
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    # Rows already in order: a source over them with one epoch in sequence.
    source = RowSource(list(rows.unbind(0)), pad_id=0, seed=args.seed)
    source._order = lambda epoch: torch.arange(len(source.rows))  # keep the given order
    config = TrainConfig(steps=args.steps, micro_batch_size=args.micro, grad_accum=args.accum,
                         seq_len=args.seq_len, lr=args.lr, warmup=0, min_lr_ratio=1.0,
                         weight_decay=0.0, betas=(0.9, 0.999), max_grad_norm=1.0,
                         precision=args.precision, device=args.device, progress=False,
                         log_every=args.steps)  # fmt: skip
    start = time.perf_counter()
    result = run_training(model, config, source, callbacks=[Clock()])
    return {
        "step_times": [b - a for a, b in zip([start, *times], times, strict=False)],
        "losses": [r["loss"] for r in result.history],
    }


def worker_hf(args) -> dict:
    """One Hugging Face Trainer run over the same rows, unshuffled."""
    import tempfile

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model, rows = build_model_and_rows(args, args.steps * args.micro * args.accum)
    dataset = [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r} for r in rows]
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if torch.cuda.is_available() and args.device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=args.micro,
            gradient_accumulation_steps=args.accum,
            max_steps=args.steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            adam_beta1=0.9,
            adam_beta2=0.999,
            max_grad_norm=1.0,
            optim=args.hf_optim,
            bf16=args.precision == "bf16",
            fp16=args.precision == "fp16",
            use_cpu=args.device == "cpu",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            train_sampling_strategy="sequential",
            seed=args.seed,
        )
        trainer = Trainer(model=model, args=targs, train_dataset=dataset, callbacks=[Clock()])
        start = time.perf_counter()
        trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "step_times": [b - a for a, b in zip([start, *times], times, strict=False)],
        "losses": losses,
    }


WORKERS = {"llmopt": worker_llmopt, "hf": worker_hf}


def run_worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = WORKERS[args.worker](args)
    out["peak_memory_mb"] = peak_memory_mb(args.device)
    out["threads"] = torch.get_num_threads()
    print("RESULT " + json.dumps(out))


def spawn(args, worker: str, precision: str) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--precision", precision,
               "--steps", str(args.steps), "--micro", str(args.micro), "--accum", str(args.accum),
               "--lr", str(args.lr), "--device", args.device, "--seed", str(args.seed),
               "--threads", str(args.threads), "--model", args.model,
               "--seq-len", str(args.seq_len), "--hf-optim", args.hf_optim]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{worker} {precision} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def summarise(runs: list[dict], tokens_per_step: int) -> dict:
    steady = [t for r in runs for t in r["step_times"][1:]]  # drop each run's warm-up step
    median = statistics.median(steady)
    return {
        "tokens_per_s": tokens_per_step / median,
        "median_step_s": median,
        "peak_memory_mb": statistics.median(r["peak_memory_mb"] for r in runs),
        "final_loss": runs[-1]["losses"][-1],
        "losses": runs[-1]["losses"],
        "runs": len(runs),
        # Per-run medians show how much the machine's load moved the numbers.
        "per_run_median_step_s": [statistics.median(r["step_times"][1:]) for r in runs],
        "threads": [r.get("threads") for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model spec, or 'toy'")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument(
        "--hf-optim",
        default="adamw_torch_fused",
        help="the HF Trainer's --optim (its default with torch >= 2.8)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per trainer and precision")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 repeat")
    parser.add_argument("--json", default="benchmarks/results/train_throughput.json")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.quick:
        args.steps, args.repeats = 4, 1
    tokens_per_step = args.micro * args.accum * args.seq_len
    model = TOY if args.model == "toy" else args.model
    results: dict = {"settings": {**vars(args), "model": model, "machine": machine()}}
    for precision in args.precisions.split(","):
        runs: dict[str, list[dict]] = {"llmopt": [], "hf": []}
        for repeat in range(args.repeats):
            order = ("llmopt", "hf") if repeat % 2 == 0 else ("hf", "llmopt")  # alternate
            for worker in order:
                runs[worker].append(spawn(args, worker, precision))
        results[precision] = {w: summarise(r, tokens_per_step) for w, r in runs.items()}
        ours, theirs = results[precision]["llmopt"], results[precision]["hf"]
        results[precision]["speedup"] = ours["tokens_per_s"] / theirs["tokens_per_s"]
        results[precision]["max_loss_diff"] = max(
            abs(a - b) for a, b in zip(ours["losses"], theirs["losses"], strict=True)
        )
    results["settings"]["load_average_at_end"] = __import__("os").getloadavg()
    print_table(results, args.precisions.split(","))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


def print_table(results: dict, precisions: list[str]) -> None:
    print(f"{'precision':<10}{'trainer':<9}{'tokens/s':>10}{'peak MiB':>10}{'final loss':>12}")
    for p in precisions:
        for w in ("llmopt", "hf"):
            r = results[p][w]
            print(f"{p:<10}{w:<9}{r['tokens_per_s']:>10.0f}{r['peak_memory_mb']:>10.0f}"
                  f"{r['final_loss']:>12.4f}")  # fmt: skip
        print(f"{p:<10}{'ratio':<9}{results[p]['speedup']:>10.2f}x  "
              f"(max |loss diff| over steps {results[p]['max_loss_diff']:.2e})")  # fmt: skip
    if "fp32" in results and "bf16" in results:
        bf, fp = results["bf16"]["llmopt"], results["fp32"]["llmopt"]
        print(f"llmopt bf16 / fp32 tokens/s: {bf['tokens_per_s'] / fp['tokens_per_s']:.2f}x")
        curve = max(abs(a - b) for a, b in zip(bf["losses"], fp["losses"], strict=True))
        print(f"llmopt bf16 vs fp32 loss curves: max |diff| {curve:.3f}")
    settings = results["settings"]
    print(f"--precision auto here: {settings['machine']['auto_precision']}; load average "
          f"{settings['machine']['load_average_at_start'][0]:.1f} at the start, "
          f"{settings['load_average_at_end'][0]:.1f} at the end")  # fmt: skip


if __name__ == "__main__":
    main()
