"""The trainer's command-line flags, shared by `llmopt train` and `llmopt distill`.

`add_trainer_arguments` adds them; `trainer_config_from_args` reads them back
into a validated `TrainConfig`; `maybe_relaunch` turns `--nproc N` into a
torchrun launch of the same command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from llmopt.config import build
from llmopt.errors import BadInput
from llmopt.train.config import TrainConfig

# flag dest -> TrainConfig field, for flags whose name differs from the field.
_RENAMED = {"keep_last": "keep_checkpoints"}


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the trainer flags (defaults come from `TrainConfig`)."""
    d = TrainConfig()
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps ({d.steps})")
    g.add_argument(
        "--micro-batch-size",
        type=int,
        default=d.micro_batch_size,
        help=f"rows per forward/backward per process ({d.micro_batch_size})",
    )
    g.add_argument(
        "--grad-accum",
        type=int,
        default=d.grad_accum,
        help="micro-batches per optimizer step per process (1)",
    )
    g.add_argument("--seq-len", type=int, default=d.seq_len, help=f"row length ({d.seq_len})")
    g.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pack documents into full rows (default), or --no-pack: one padded document per row",
    )
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate ({d.lr})")
    g.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio, help="final lr / peak")
    g.add_argument("--warmup", type=int, default=d.warmup, help=f"warm-up steps ({d.warmup})")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay")
    g.add_argument(
        "--max-grad-norm", type=float, default=d.max_grad_norm, help="clip norm (0: off)"
    )
    g.add_argument(
        "--precision",
        default=d.precision,
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: bf16 on a CUDA GPU that has it, else fp32",
    )
    g.add_argument(
        "--max-consecutive-skips",
        type=int,
        default=d.max_consecutive_skips,
        help="fp16: stop after this many overflowed steps in a row",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="data order and initialisation seed")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda")
    g.add_argument("--nproc", type=int, default=1, help="local processes (torchrun)")
    g.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (needs --nproc >= 2)")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps per metrics row")
    g.add_argument(
        "--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: off)"
    )
    g.add_argument("--keep-last", type=int, default=d.keep_checkpoints, help="checkpoints to keep")
    g.add_argument("--resume", default=None, help="a checkpoint, or a run folder (its newest)")
    g.add_argument(
        "--run-dir",
        default=None,
        help="checkpoints and metrics.jsonl (default: OUTPUT.train next to --output)",
    )
    g.add_argument(
        "--keep-masks",
        action="store_true",
        help="keep exactly-zero weights of block linears at zero (after pruning)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(_trainer_parser=parser)


def trainer_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The `TrainConfig` the trainer flags describe.

    Raises:
        BadInput: a value is out of range (the message names the flag).
    """
    values = {}
    for name in TrainConfig.model_fields:
        dest = next((k for k, v in _RENAMED.items() if v == name), name)
        if hasattr(args, dest):
            values[name] = getattr(args, dest)
    values["progress"] = not getattr(args, "no_progress", False)
    for flag in ("nproc",):
        if getattr(args, flag, 1) < 1:
            raise BadInput(f"--{flag} {getattr(args, flag)}: must be at least 1")
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        first = err.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "value"
        dest = next((k for k, v in _RENAMED.items() if v == name), name)
        flag = "--" + dest.replace("_", "-")
        raise BadInput(f"{flag} {first.get('input')!r}: {first['msg'].lower()}") from None


def maybe_relaunch(args: argparse.Namespace, preflight=None) -> int | None:
    """With `--nproc N > 1` outside torchrun: run this command as N processes.

    `preflight(processes)` (optional) checks user input first, in this process,
    so that a bad value exits with status 2 rather than as a worker failure.
    Returns the launched command's exit status, or None when this process
    should train itself.
    """
    from llmopt.train.distributed import launched_by_torchrun, relaunch_with_torchrun

    nproc = getattr(args, "nproc", 1)
    if nproc < 1:
        raise BadInput(f"--nproc {nproc}: must be at least 1")
    if nproc == 1 or launched_by_torchrun():
        return None
    if preflight is not None:
        preflight(nproc)
    return relaunch_with_torchrun(nproc, args._trainer_parser, args, args.verb)


def eval_config_from_args(args: argparse.Namespace, config: TrainConfig):
    """The before/after measurement the eval flags describe (None with --no-eval).

    Raises:
        BadInput: a measurement value is out of range.
    """
    from llmopt.evaluate.summary import EvalConfig

    if getattr(args, "no_eval", False):
        return None
    return build(
        EvalConfig,
        data=args.eval_data,
        seq_len=args.eval_seq_len or min(512, config.seq_len),
        max_tokens=args.eval_max_tokens,
        speed=False,
        progress=config.progress,
    )


def stage_spec_from_args(args: argparse.Namespace, config: TrainConfig, evaluation, stage: str):
    """A `StageSpec` for a verb that trains (train, distill)."""
    from llmopt.train.stage import StageSpec

    recorded = {
        k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("run", "verb")
    }
    return StageSpec(
        model=args.model,
        data=args.data,
        output=args.output,
        config=config,
        text_field=args.text_field,
        overwrite=args.overwrite,
        run_dir=args.run_dir,
        evaluation=evaluation,
        stage=stage,
        args=recorded,
    )


def print_train_summary(spec, metrics: dict) -> None:
    """The lines a training verb prints at the end."""
    from llmopt.cli.common import human_count, print_table

    train = metrics["train"]
    rows = [
        ("steps", f"{train['steps']}  ({train['processes']} process(es), {train['precision']})"),
        ("final loss", f"{train['final_loss']:.4f}"),
        ("tokens", human_count(train["tokens"])),
        (
            "time",
            f"{train['train_wall_time_s']:.1f} s  "
            f"({train['tokens'] / max(train['train_wall_time_s'], 1e-9):,.0f} tokens/s)",
        ),
    ]
    if train["skipped_steps"]:
        rows.append(("skipped (fp16)", str(train["skipped_steps"])))
    for when in ("before", "after"):
        if metrics.get(when):
            rows.append((f"perplexity {when}", f"{metrics[when]['perplexity']:.3f}"))
    rows.append(("output", spec.output))
    rows.append(("run folder", train["run_dir"]))
    print_table(rows, title=f"{spec.stage} {spec.model} on {spec.data}")


def run_interruptible(run_stage: Callable[[], dict[str, Any] | None]) -> tuple[int, Any]:
    """Run a training stage; on Ctrl-C say where its checkpoint is and how to resume.

    Returns (exit status, the stage's metrics): (130, None) when interrupted.
    """
    from llmopt.train.trainer import TrainingInterrupted

    try:
        return 0, run_stage()
    except TrainingInterrupted as stop:
        where = stop.checkpoint or "(no run folder)"
        print(f"interrupted after step {stop.step}; checkpoint: {where}")
        print(f"continue with: --resume {where}")
        return 130, None
