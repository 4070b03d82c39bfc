"""Distil a teacher model into a student (a smaller, pruned, slimmed or shared model).

The student learns alpha * T^2 * D(teacher_T || student_T) + (1 - alpha) * CE
per label token, D being forward KL, reverse KL or a generalised JSD, with
optional hidden-state matching through learned projections. The teacher runs
online (frozen, in the training precision), or once into an offline top-k
cache (--cache-teacher DIR) that later runs train from without loading it.
Every trainer flag applies (accumulation, precision, --nproc/--fsdp, resume,
--keep-masks for a pruned student). Writes the student as a Hugging Face
checkpoint with llmopt.json (teacher, losses, curves, perplexities).
"""

from __future__ import annotations

import argparse

from llmopt.cli.common import (
    add_data_arguments,
    add_eval_arguments,
    add_model_argument,
    add_output_arguments,
    human_bytes,
    print_table,
)

HELP = "distil a teacher into a student (KL / reverse KL / JSD, hidden states, top-k cache)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmopt.distill.config import DistillConfig
    from llmopt.train.cli_args import add_trainer_arguments

    d = DistillConfig()
    add_model_argument(parser)
    g = parser.add_argument_group("distillation")
    g.add_argument("--teacher", default=None, help="teacher model (zoo name, folder or hub id)")
    g.add_argument("--loss", default=d.loss, choices=["kl", "reverse-kl", "jsd"], help="divergence")
    g.add_argument("--temperature", type=float, default=d.temperature, help="softening T")
    g.add_argument("--alpha", type=float, default=d.alpha, help="KD weight; 1-alpha: hard CE")
    g.add_argument("--beta", type=float, default=d.beta, help="JSD: 0 forward KL .. 1 reverse KL")
    g.add_argument("--hidden-loss", default=None, choices=["mse", "cosine"], help="match states")
    g.add_argument("--hidden-weight", type=float, default=d.hidden_weight, help="its weight")
    g.add_argument("--layer-map", default=None, help="S:T,... student:teacher layers (0-based)")
    g.add_argument("--cache-teacher", default=None, help="top-k cache folder (made if missing)")
    g.add_argument("--cache-k", type=int, default=d.cache_k, help=f"top-k kept ({d.cache_k})")
    g.add_argument("--chunk-tokens", type=int, default=d.chunk_tokens, help="loss chunk length")
    add_data_arguments(parser)
    add_output_arguments(parser)
    add_trainer_arguments(parser)
    add_eval_arguments(parser)


def _distill_config(args: argparse.Namespace):
    from llmopt.config import build
    from llmopt.distill.config import DistillConfig

    return build(
        DistillConfig,
        teacher=args.teacher,
        loss=args.loss,
        temperature=args.temperature,
        alpha=args.alpha,
        beta=args.beta,
        hidden_loss=args.hidden_loss,
        hidden_weight=args.hidden_weight,
        layer_map=args.layer_map,
        cache_teacher=args.cache_teacher,
        cache_k=args.cache_k,
        chunk_tokens=args.chunk_tokens,
    )


def run(args: argparse.Namespace) -> int:
    from llmopt.distill.stage import ensure_teacher_cache, run_distill_stage
    from llmopt.train.cli_args import (
        eval_config_from_args,
        maybe_relaunch,
        print_train_summary,
        run_interruptible,
        stage_spec_from_args,
        trainer_config_from_args,
    )
    from llmopt.train.stage import preflight

    config = trainer_config_from_args(args)
    dcfg = _distill_config(args)
    spec = stage_spec_from_args(args, config, eval_config_from_args(args, config), "distill")
    if args.nproc > 1:
        from llmopt.outputs import check_output

        check_output(spec.output, spec.overwrite)
        ensure_teacher_cache(spec, dcfg, args.nproc)  # once, before the processes start
    # Bad input under --nproc is caught here (exit 2), not as a worker's failure.
    code = maybe_relaunch(args, preflight=lambda processes: preflight(spec, processes))
    if code is not None:
        return code
    code, metrics = run_interruptible(lambda: run_distill_stage(spec, dcfg))
    if metrics is not None:
        print_train_summary(spec, metrics)
        _print_distill(metrics)
    return code


def _print_distill(metrics: dict) -> None:
    info = metrics["distill"]
    rows = [("teacher", f"{info['teacher']} ({info['source']})")]
    loss = f"{info['loss']}, T={info['temperature']}, alpha={info['alpha']}"
    if info.get("beta") is not None:
        loss += f", beta={info['beta']}"
    rows.append(("loss", loss))
    if info.get("hidden_loss"):
        rows.append(
            ("hidden", f"{info['hidden_loss']} x{info['hidden_weight']} on {info['layer_map']}")
        )
    if metrics.get("teacher"):
        rows.append(("teacher perplexity", f"{metrics['teacher']['perplexity']:.3f}"))
    curve = info.get("curve") or []
    if curve and "kd" in curve[-1]:
        rows.append(("final kd / ce", f"{curve[-1]['kd']:.4f} / {curve[-1]['ce']:.4f}"))
    if "cache" in info:
        c = info["cache"]
        rows.append(
            (
                "teacher cache",
                f"k={c['k']}, {human_bytes(c['disk_bytes'])}, {c['bytes_per_token']:.0f} B/token, "
                f"{100 * (c['mass_outside_topk'] or 0):.1f}% of the mass outside the top k",
            )
        )
    print_table(rows, title="distillation")
