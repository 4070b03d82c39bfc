"""Train (or fine-tune) a causal LM on text with llmopt's trainer.

Exact gradient accumulation, fp32/bf16/fp16, DDP or FSDP2 through torchrun
(--nproc N), resumable checkpoints. Writes a Hugging Face checkpoint folder
with llmopt.json (perplexity before and after); checkpoints and metrics.jsonl
go to OUTPUT.train (or --run-dir). Ctrl-C saves a checkpoint: continue with
--resume OUTPUT.train.
"""

from __future__ import annotations

import argparse

from llmopt.cli.common import (
    add_data_arguments,
    add_eval_arguments,
    add_model_argument,
    add_output_arguments,
)

HELP = "train or fine-tune a model (accumulation, mixed precision, DDP/FSDP, resume)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llmopt.train.cli_args import add_trainer_arguments

    add_model_argument(parser)
    add_data_arguments(parser)
    add_output_arguments(parser)
    add_trainer_arguments(parser)
    add_eval_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from llmopt.train.cli_args import (
        eval_config_from_args,
        maybe_relaunch,
        print_train_summary,
        run_interruptible,
        stage_spec_from_args,
        trainer_config_from_args,
    )
    from llmopt.train.stage import preflight, run_train_stage

    config = trainer_config_from_args(args)
    spec = stage_spec_from_args(args, config, eval_config_from_args(args, config), stage="train")
    code = maybe_relaunch(args, preflight=lambda processes: preflight(spec, processes))
    if code is not None:
        return code
    code, metrics = run_interruptible(lambda: run_train_stage(spec))
    if metrics is not None:
        print_train_summary(spec, metrics)
    return code
