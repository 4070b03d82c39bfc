"""Recovery side by side: held-out perplexity against cost for every way to recover a model.

Compressed models of smollm2-135m (made once by the stages themselves):
Wanda 2:4, SparseGPT 50% unstructured, sharing with K = 20 of 30 layers
(cycle, stepwise init), and a 0.8x slimmed model (`slim --params 0.8`; left
out while no `slim` stage is registered). Recovery methods, each a curve:

  hard   fine-tuning on next-token labels, zeros kept (`llmopt train --keep-masks`)
  kd     logit distillation from the dense model (`llmopt distill`), zeros kept
  rc     block-wise reconstruction against the dense model (`llmopt reconstruct`)
  rc+kd  rc, then kd
  rc+hard  rc, then hard labels (compare phase only)

Held-out text (nothing here trains or calibrates on it): the validation split
of `pydoc` (reference topics never in the training split that training rows
and calibration blocks are drawn from) and the long module docstrings of the
standard library (every CPython install has them; PSF licence; read from the
local install with `ast`, not shipped, so the text follows the Python version).
The score is the geometric mean of the two perplexities (the first
`eval_tokens` of each, windows of `eval_seq_len`).

Cost: every curve point records optimizer steps, training tokens and the
run's CPU seconds outside evaluation. Runs are single-threaded (--threads 1),
so CPU seconds are close to what an idle core takes whatever the load, and
they never count the other engineers' work; 900 single-thread CPU seconds is
a lower bound on what 15 minutes of an idle 2-core machine buys. `timing`
measures wall seconds per step of each method (interleaved, side by side,
default threads) with the load average; `report` converts the curves with it.
On an idle machine rerun `--phase timing` then `--phase report`.

Phases (`--phase all` runs them in this order; finished runs are reused):

  prepare  make the compressed models; score them and the dense model
  grid     2:4 model, a short horizon: hard (lr), kd (lr, schedule, T, alpha,
           KL / reverse KL / JSD, + hidden states), rc (steps, lr, loss), rc+kd
  full     the grid's best hard, kd and rc+kd up to the CPU budget on every
           model; a second seed for the best method of each model
  timing   seconds per step of hard, kd and one reconstruction block step
  report   tables (score against steps, tokens, CPU and converted seconds)

  compare  (not in `all`) issue 14's curves at one CPU budget (--budget-cpu,
           --lr) on --models (default: the 2:4 model): hard labels, kd at
           T=2 alpha=0.5 (the default), kd at T=1 alpha=1 (forward KL on
           the logits alone), reconstruction then kd, and (--methods)
           reconstruction then hard labels; steps are planned from measured
           CPU seconds per step, and `report` prints the curves

    .venv/bin/python benchmarks/recovery.py                 # hours on 2 shared cores
    .venv/bin/python benchmarks/recovery.py --quick         # the same story in minutes
    .venv/bin/python benchmarks/recovery.py --phase timing  # then --phase report
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEACHER = "smollm2-135m"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Profile:
    """How big the benchmark is: the full one, or --quick."""

    calib_samples: int = 128
    eval_tokens: int = 4096
    eval_seq_len: int = 512
    grid_steps: int = 24
    budget_cpu_s: float = 900.0
    rc_calib_samples: int = 64
    rc_calib_seq_len: int = 512
    rc_steps: tuple[int, ...] = (8, 32)
    evals: int = 6
    """Curve points per run besides the start (evenly spaced in steps)."""


FULL = Profile()
QUICK = Profile(
    calib_samples=16,
    eval_tokens=512,
    eval_seq_len=256,
    grid_steps=4,
    budget_cpu_s=60.0,
    rc_calib_samples=8,
    rc_calib_seq_len=128,
    rc_steps=(2, 4),
    evals=2,
)

TRAIN = {"micro_batch_size": 8, "seq_len": 256, "warmup": 2, "min_lr_ratio": 0.1}
"""Every end-to-end run: 2048 tokens per optimizer step (the issue's setting), bf16."""


# ----- held-out text ---------------------------------------------------------------------


def stdlib_docstrings(min_chars: int = 800) -> str:
    """The long module docstrings of the running Python's standard library, one per paragraph.

    Top-level modules of the stdlib folder in file-name order, read with `ast`
    (nothing is imported); docstrings shorter than `min_chars` (one-liners,
    stubs) are left out.
    """
    import ast
    import sysconfig

    docs = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        if doc and len(doc) >= min_chars:
            docs.append(doc.strip())
    return "\n\n".join(docs) + "\n"


def heldout(tokenizer, workdir: Path, profile: Profile) -> dict[str, Any]:
    """name -> token ids of each held-out corpus (its first `eval_tokens` tokens)."""
    from llmopt.data.corpus import load_corpus

    folder = workdir / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    docstrings = folder / f"stdlib-docstrings-{sys.version_info[0]}.{sys.version_info[1]}.txt"
    if not docstrings.is_file():
        docstrings.write_text(stdlib_docstrings(), encoding="utf-8")
    return {
        "pydoc-val": load_corpus("pydoc", tokenizer, split="validation").ids[: profile.eval_tokens],
        "stdlib-doc": load_corpus(str(docstrings), tokenizer, split="all").ids[
            : profile.eval_tokens
        ],
    }


def score(model, corpora: dict[str, Any], profile: Profile) -> dict[str, float]:
    """Perplexity on each held-out corpus and their geometric mean ('score')."""
    from llmopt.evaluate.perplexity import evaluate_perplexity

    out = {
        name: evaluate_perplexity(model, ids, profile.eval_seq_len, progress=False).perplexity
        for name, ids in corpora.items()
    }
    out["score"] = math.exp(statistics.fmean(math.log(v) for v in out.values()))
    return out


# ----- the compressed models -------------------------------------------------------------


def model_specs(profile: Profile) -> dict[str, dict[str, Any]]:
    """name -> (stage, config) of each compressed model; slim only if the stage exists."""
    from llmopt.pipeline.registry import STAGES

    calib = {"calib_samples": profile.calib_samples, "calib_dtype": "bfloat16"}
    specs = {
        "wanda-2of4": {"stage": "prune", "method": "wanda", "pattern": "2:4", **calib},
        "sparsegpt-50": {"stage": "prune", "method": "sparsegpt", "sparsity": 0.5, **calib},
        "share-20": {
            "stage": "share",
            "unique_layers": 20,
            "strategy": "cycle",
            "init": "stepwise",
            "save_format": "shared",
        },
    }
    if "slim" in STAGES:
        specs["slim-80"] = {
            "stage": "slim",
            "params": 0.8,
            **calib,
            "calib_samples": min(64, profile.calib_samples),
        }
    return specs


def prepare(args, profile: Profile) -> dict[str, Any]:
    """Make every compressed model (reused when present) and score each and the dense model."""
    from llmopt.models import load_tokenizer
    from llmopt.pipeline.formats import load_checkpoint
    from llmopt.pipeline.runner import run_stage

    path = args.workdir / "models.json"
    facts = _read(path) or {}
    corpora = heldout(load_tokenizer(TEACHER), args.workdir, profile)
    if "dense" not in facts:
        facts["dense"] = {"score": score(load_checkpoint(TEACHER), corpora, profile)}
    wanted = args.models.split(",") if args.models else None
    for name, spec in model_specs(profile).items():
        if wanted is not None and name not in wanted:
            continue
        folder = args.workdir / "models" / name
        if name in facts and (folder / "llmopt.json").is_file():
            continue
        seconds = None
        if not (folder / "llmopt.json").is_file():  # a finished stage output is reused
            say(f"prepare: {name}")
            t0 = time.perf_counter()
            config = {k: v for k, v in spec.items() if k != "stage"}
            run_stage(
                spec["stage"],
                TEACHER,
                folder,
                config,
                overwrite=True,
                eval={"enabled": False},
                progress=False,
            )
            seconds = round(time.perf_counter() - t0, 1)
        facts[name] = {
            "stage": spec,
            "seconds": seconds,
            "score": score(load_checkpoint(folder), corpora, profile),
        }
        _write(path, facts)
    _write(path, facts)
    return facts


# ----- one run: a model recovered one way, scored along the way ----------------------------


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


class Curve:
    """Scores the model at chosen steps; keeps the cost clock outside the evaluations."""

    def __init__(self, corpora, profile: Profile, at: set[int], offset: dict[str, float]):
        self.corpora, self.profile, self.at = corpora, profile, at
        self.points: list[dict[str, Any]] = []
        self.offset = offset  # cost already spent (the reconstruction) before training
        self.eval_cpu = self.eval_wall = 0.0
        self.cpu0, self.wall0 = _clock()

    def spent(self) -> tuple[float, float]:
        cpu, wall = _clock()
        return (
            cpu - self.cpu0 - self.eval_cpu + self.offset["cpu_s"],
            wall - self.wall0 - self.eval_wall + self.offset["wall_s"],
        )

    def point(self, model, phase: str, step: int, tokens: int) -> None:
        cpu_s, wall_s = self.spent()
        e0 = _clock()
        result = score(model, self.corpora, self.profile)
        e1 = _clock()
        self.eval_cpu += e1[0] - e0[0]
        self.eval_wall += e1[1] - e0[1]
        row = {
            "phase": phase,
            "step": step,
            "tokens": tokens,
            "cpu_s": round(cpu_s, 2),
            "wall_s": round(wall_s, 2),
            "load": os.getloadavg()[0],
            **result,
        }
        self.points.append(row)
        say(
            f"  {phase} step {step:4d}  tokens {tokens:7d}  cpu {cpu_s:7.1f}s  "
            f"score {result['score']:8.3f}"
        )


def _curve_callback(curve: Curve, tokens_per_step: int):
    from llmopt.train.callbacks import Callback

    class Scores(Callback):
        def on_step_start(self, trainer) -> None:
            if trainer.step in curve.at and trainer.step > 0:
                curve.point(
                    trainer.raw_model, "train", trainer.step, trainer.step * tokens_per_step
                )

        def on_train_end(self, trainer) -> None:
            curve.point(trainer.raw_model, "train", trainer.step, trainer.step * tokens_per_step)

    return Scores()


def _reconstruct(student, teacher, tokenizer, folder: Path, rc: dict[str, Any]) -> dict[str, Any]:
    from llmopt.calibrate.data import CalibrationSettings, load_calibration
    from llmopt.models.arch import ArchAdapter
    from llmopt.provenance import read_record
    from llmopt.reconstruct import BlockFit, reconstruct_model
    from llmopt.reconstruct.layers import choose_layer_map

    settings = CalibrationSettings(
        calib_samples=rc["calib_samples"],
        calib_seq_len=rc["calib_seq_len"],
        calib_batch_size=rc.get("calib_batch_size", 8),
        calib_dtype=rc.get("calib_dtype", "float32"),
        seed=rc.get("seed", 0),
    )
    import torch

    calib = load_calibration(settings, tokenizer, student, torch.device("cpu"), progress=False)
    targets, how = choose_layer_map(
        None, ArchAdapter(student).num_layers, ArchAdapter(teacher).num_layers, read_record(folder)
    )
    fit = BlockFit(rc["steps"], rc["lr"], rc.get("loss", "mse"), seed=rc.get("seed", 0))
    facts = reconstruct_model(student, teacher, calib, targets, fit)
    keys = ("mean_loss_before", "mean_loss_after", "tokens", "optimizer_steps", "seconds")
    blocks = [
        {k: row[k] for k in ("block", "target", "loss_before", "loss_after", "seconds")}
        for row in facts["blocks"]
    ]
    return {"layer_map": how, **{k: facts[k] for k in keys}, "blocks": blocks}


def run_one(spec: dict[str, Any], args, profile: Profile) -> dict[str, Any]:
    """One recovery run (in its own process): the curve of its score against its cost."""
    import torch

    from llmopt.config import build
    from llmopt.distill.losses import LossSpec
    from llmopt.distill.objective import DistillObjective
    from llmopt.distill.vocab import shared_vocab_size
    from llmopt.models import load_tokenizer
    from llmopt.pipeline.formats import load_checkpoint
    from llmopt.train.config import TrainConfig
    from llmopt.train.data import build_source
    from llmopt.train.trainer import run_training

    torch.manual_seed(spec["seed"])
    folder = args.workdir / "models" / spec["model"]
    tokenizer = load_tokenizer(TEACHER)
    corpora = heldout(tokenizer, args.workdir, profile)
    student = load_checkpoint(folder)
    method = spec["method"]
    teacher = load_checkpoint(TEACHER) if method != "hard" else None
    offset = {"cpu_s": 0.0, "wall_s": 0.0}
    curve = Curve(corpora, profile, set(spec["eval_at"]), offset)
    curve.point(student, "start", 0, 0)
    facts: dict[str, Any] = {}
    if "rc" in spec:
        curve.cpu0, curve.wall0 = _clock()
        facts["rc"] = _reconstruct(student, teacher, tokenizer, folder, spec["rc"])
        curve.point(student, "rc", 0, 0)
        offset["cpu_s"], offset["wall_s"] = curve.spent()
    steps = spec.get("steps", 0)
    if steps:
        train = {**TRAIN, **spec.get("train", {})}
        cfg = build(
            TrainConfig,
            steps=steps,
            seed=spec["seed"],
            precision="bf16",
            keep_masks=True,
            progress=False,
            log_every=max(1, steps // 8),
            **train,
        )
        objective = None
        if "kd" in spec:
            vocab = shared_vocab_size(
                tokenizer, tokenizer, student.config.vocab_size, teacher.config.vocab_size
            )
            hidden, weight = None, 1.0
            if "hidden" in spec:  # also match every layer's hidden state (SquareHead-like)
                from llmopt.distill.hidden import HiddenStateLoss, default_layer_map

                layers = student.config.num_hidden_layers, teacher.config.num_hidden_layers
                width = student.config.hidden_size
                hidden = HiddenStateLoss(
                    default_layer_map(*layers), width, width, kind=spec["hidden"]["kind"]
                )
                weight = spec["hidden"]["weight"]
            objective = DistillObjective(
                LossSpec(**spec["kd"]), vocab, teacher=teacher, hidden=hidden, hidden_weight=weight
            )
        data = build_source("pydoc", tokenizer, cfg.seq_len, True, cfg.seed)
        per_step = cfg.micro_batch_size * cfg.grad_accum * cfg.seq_len
        curve.cpu0, curve.wall0 = _clock()
        curve.eval_cpu = curve.eval_wall = 0.0
        callback = _curve_callback(curve, per_step)
        result = run_training(student, cfg, data, objective, [callback], None, str(folder))
        facts["final_loss"] = result.history[-1]["loss"]
    return {
        "spec": spec,
        "points": curve.points,
        **facts,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }


def eval_steps(steps: int, count: int) -> list[int]:
    """`count` evaluation steps spread evenly over `steps` (the last one always)."""
    return sorted({max(1, round(steps * (i + 1) / count)) for i in range(count)})


def _command(spec: dict[str, Any], args) -> list[str]:
    command = [sys.executable, __file__, "--run-one", json.dumps(spec)]
    command += ["--workdir", str(args.workdir), "--threads", str(args.threads)]
    return [*command, "--quick"] if args.quick else command


def launch_all(specs: list[dict[str, Any]], args) -> list[dict[str, Any] | None]:
    """Run the specs whose results do not exist yet, `--jobs` child processes at a time.

    Returns each spec's result (None for a run that failed), in the order given.
    """
    paths = [args.workdir / "runs" / f"{spec['id']}.json" for spec in specs]
    todo = [
        (spec, path)
        for spec, path in zip(specs, paths, strict=True)
        if (_read(path) or {}).get("spec") != spec
    ]
    running: list[tuple[dict[str, Any], subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            spec, path = todo.pop(0)
            path.parent.mkdir(parents=True, exist_ok=True)
            say(f"run {spec['id']}")
            running.append((spec, subprocess.Popen(_command(spec, args))))
        time.sleep(1)
        for spec, child in list(running):
            if child.poll() is not None:
                running.remove((spec, child))
                if child.returncode != 0:
                    say(f"run {spec['id']} failed (exit {child.returncode})")
    results = [_read(path) for path in paths]
    return [
        r if r and r.get("spec") == spec else None for r, spec in zip(results, specs, strict=True)
    ]


# ----- the grid, the full runs -----------------------------------------------------------


def _spec(run_id: str, model: str, method: str, steps: int, seed: int = 0, **parts) -> dict:
    evals = parts.pop("evals", 3)
    spec = {"id": run_id, "model": model, "method": method, "seed": seed, "steps": steps}
    spec.update(parts)
    spec["eval_at"] = eval_steps(steps, evals) if steps else []
    return spec


def _rc(profile: Profile, steps: int, lr: float, loss: str = "mse") -> dict[str, Any]:
    return {
        "steps": steps,
        "lr": lr,
        "loss": loss,
        "calib_samples": profile.rc_calib_samples,
        "calib_seq_len": profile.rc_calib_seq_len,
        "calib_dtype": "bfloat16",
    }


KD_BASE = {"divergence": "kl", "temperature": 1.0, "alpha": 1.0}
"""Minitron's finding (forward KL on the logits alone at T=1), the grid's centre."""


def grid_specs(profile: Profile) -> list[dict[str, Any]]:
    """The coarse short-horizon grid on the 2:4 model (one seed per point)."""
    m, n = "wanda-2of4", profile.grid_steps
    specs = [
        _spec(f"grid-hard-lr{lr:g}", m, "hard", n, train={"lr": lr}) for lr in (1e-4, 3e-4, 1e-3)
    ]
    specs += [
        _spec(f"grid-kd-lr{lr:g}", m, "kd", n, train={"lr": lr}, kd=KD_BASE)
        for lr in (1e-4, 3e-4, 1e-3)
    ]
    return specs


def grid_variants(best_lr: float, profile: Profile) -> list[dict[str, Any]]:
    """Around the best kd learning rate: schedule, temperature, alpha, divergence."""
    m, n, lr = "wanda-2of4", profile.grid_steps, {"lr": best_lr}
    variants = {
        "const": ({**lr, "min_lr_ratio": 1.0}, KD_BASE),
        "T2": (lr, {**KD_BASE, "temperature": 2.0}),
        "a0.5": (lr, {**KD_BASE, "alpha": 0.5}),
        "rkl": (lr, {**KD_BASE, "divergence": "reverse-kl"}),
        "jsd": (lr, {**KD_BASE, "divergence": "jsd"}),
    }
    specs = [
        _spec(f"grid-kd-{name}", m, "kd", n, train=train, kd=kd)
        for name, (train, kd) in variants.items()
    ]
    hidden = {"kind": "cosine", "weight": 1.0}
    return [*specs, _spec("grid-kd-hidden-cos", m, "kd", n, train=lr, kd=KD_BASE, hidden=hidden)]


def rc_specs(profile: Profile) -> list[dict[str, Any]]:
    """Reconstruction alone on the 2:4 model: steps per block, learning rate, loss."""
    m = "wanda-2of4"
    low, high = profile.rc_steps
    out = [
        _spec(f"grid-rc-s{s}-lr{lr:g}", m, "rc", 0, rc=_rc(profile, s, lr))
        for s in (low, high)
        for lr in (1e-4, 1e-3)
    ]
    out.append(
        _spec(f"grid-rc-s{low}-lr1e-3-cos", m, "rc", 0, rc=_rc(profile, low, 1e-3, "mse+cosine"))
    )
    return out


def _final(result: dict[str, Any] | None) -> float:
    return result["points"][-1]["score"] if result else float("inf")


def best(results: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The finished run with the lowest final score."""
    return min((r for r in results if r), key=_final)


def run_grid(args, profile: Profile) -> dict[str, Any]:
    """Run the grid in three rounds, each around the previous round's winners."""
    first = launch_all([*grid_specs(profile), *rc_specs(profile)], args)
    by_method = {
        m: [r for r in first if r and r["spec"]["method"] == m] for m in ("hard", "kd", "rc")
    }
    hard_best, kd_best, rc_best = (best(by_method[m]) for m in ("hard", "kd", "rc"))
    second = launch_all(grid_variants(kd_best["spec"]["train"]["lr"], profile), args)
    kd_best = best([kd_best, *second])
    combo = _spec(
        "grid-rc+kd",
        "wanda-2of4",
        "rc+kd",
        profile.grid_steps,
        rc=rc_best["spec"]["rc"],
        train=kd_best["spec"]["train"],
        kd=kd_best["spec"]["kd"],
        **({"hidden": kd_best["spec"]["hidden"]} if "hidden" in kd_best["spec"] else {}),
    )
    launch_all([combo], args)
    winners = {"hard": hard_best["spec"], "kd": kd_best["spec"], "rc": rc_best["spec"]}
    _write(args.workdir / "winners.json", winners)
    return winners


def cpu_per_step(args, method: str) -> float:
    """Median CPU seconds per step of a method's grid runs (from their curves)."""
    rates = []
    for path in sorted((args.workdir / "runs").glob("grid-*.json")):
        run = _read(path)
        if not run or run["spec"]["method"] != method:
            continue
        train = [p for p in run["points"] if p["phase"] == "train"]
        base = next(p for p in run["points"] if p["phase"] in ("rc", "start"))
        rates += [(p["cpu_s"] - base["cpu_s"]) / p["step"] for p in train[-1:]]
    return statistics.median(rates)


BUDGET_MARGIN = 0.95
"""Plan the full runs to 95% of the budget: their CPU seconds per step vary a little."""


def run_full(args, profile: Profile) -> None:
    """The winners up to the CPU budget on every model; a second seed for each model's best."""
    winners = _read(args.workdir / "winners.json") or run_grid(args, profile)
    hard_rate, kd_rate = cpu_per_step(args, "hard"), cpu_per_step(args, "kd")
    rc_cost = _read(args.workdir / "runs" / f"{winners['rc']['id']}.json")["points"][-1]["cpu_s"]
    budget = BUDGET_MARGIN * profile.budget_cpu_s
    kd = {k: winners["kd"][k] for k in ("train", "kd", "hidden") if k in winners["kd"]}
    plans = {
        "hard": dict(steps=int(budget / hard_rate), train=winners["hard"]["train"]),
        "kd": dict(steps=int(budget / kd_rate), **kd),
        "rc+kd": dict(
            steps=max(1, int((budget - rc_cost) / kd_rate)), rc=winners["rc"]["rc"], **kd
        ),
    }
    models = list(model_specs(profile))
    specs = {
        (model, method): _spec(f"full-{model}-{method}", model, method, evals=profile.evals, **plan)
        for model in models
        for method, plan in plans.items()
    }
    results = dict(zip(specs, launch_all(list(specs.values()), args), strict=True))
    seeds = []
    for model in models:
        winner = min(plans, key=lambda m: _final(results[model, m]))
        seeds.append(
            _spec(
                f"full-{model}-{winner}-seed1",
                model,
                winner,
                seed=1,
                evals=profile.evals,
                **plans[winner],
            )
        )
    launch_all(seeds, args)


# ----- issue 14: four curves at one CPU budget -----------------------------------------

CPU_PER_STEP = {"hard": 10.0, "kd": 15.0}
"""Single-thread CPU seconds per 2048-token step (the quick grid's measurements); a
finished run of the method replaces the guess."""

RC_COMPARE = {"steps": 4, "lr": 1e-3, "calib_samples": 32, "calib_seq_len": 256}
"""Reconstruction of the rc+kd curve: 4 batches of 8x256 tokens, 4 steps per block
(120 block steps), the quick grid's better learning rate."""

RC_CPU_GUESS = 20.0
"""Measured: 17 single-thread CPU s for RC_COMPARE on smollm2 (the 2:4 model)."""


def _measured_rate(args, method: str) -> float:
    rates = []
    for path in sorted((args.workdir / "runs").glob("cmp-*.json")):
        run = _read(path)
        if not run or run["spec"]["method"] != method:
            continue
        train = [p for p in run["points"] if p["phase"] == "train"]
        base = next(p for p in run["points"] if p["phase"] in ("rc", "start"))
        if train:
            rates.append((train[-1]["cpu_s"] - base["cpu_s"]) / train[-1]["step"])
    return statistics.median(rates) if rates else CPU_PER_STEP[method]


def _measured_rc(args) -> float:
    for path in sorted((args.workdir / "runs").glob("cmp-rc*.json")):
        run = _read(path)
        point = next((p for p in (run or {}).get("points", []) if p["phase"] == "rc"), None)
        if point:
            return point["cpu_s"]
    return RC_CPU_GUESS


COMPARE = {
    "hard": ("hard", None, False),
    "kd-T2a0.5": ("kd", {"divergence": "kl", "temperature": 2.0, "alpha": 0.5}, False),
    "kd-T1a1": ("kd", {"divergence": "kl", "temperature": 1.0, "alpha": 1.0}, False),
    "rc+kd-T1a1": ("rc+kd", {"divergence": "kl", "temperature": 1.0, "alpha": 1.0}, True),
    "rc+kd-T2a0.5": ("rc+kd", {"divergence": "kl", "temperature": 2.0, "alpha": 0.5}, True),
    "rc+hard": ("rc+hard", None, True),
}
"""The compare phase's curves: name -> (method, distillation loss, reconstruction first)."""
COMPARE_DEFAULT = ("hard", "kd-T2a0.5", "kd-T1a1", "rc+kd-T1a1")


def compare_specs(args, profile: Profile) -> list[dict[str, Any]]:
    """The curves of issue 14 at learning rate `args.lr` on each of `args.models` (default: the
    2:4 model), each planned to `args.budget_cpu` from measured CPU seconds per step."""
    budget, lr = args.budget_cpu, args.lr
    train = {"lr": lr}
    rc = {**_rc(profile, RC_COMPARE["steps"], RC_COMPARE["lr"]), **RC_COMPARE}
    wanted = args.methods.split(",") if args.methods else list(COMPARE_DEFAULT)
    unknown = [name for name in wanted if name not in COMPARE]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown[0]!r}; choose from {', '.join(COMPARE)}")
    rates = {kind: _measured_rate(args, kind) for kind in ("hard", "kd")}
    rc_cost = _measured_rc(args)
    seed = f"-seed{args.seed}" if args.seed else ""
    specs = []
    for model in (args.models or "wanda-2of4").split(","):
        # The 2:4 model's runs keep their first ids (cmp-hard-lr0.0003, ...).
        prefix = "cmp-" if model == "wanda-2of4" else f"cmp-{model}-"
        for name in wanted:
            method, kd, first_rc = COMPARE[name]
            parts: dict[str, Any] = {"train": train, "evals": args.evals}
            if kd is not None:
                parts["kd"] = kd
            if first_rc:
                parts["rc"] = rc
            left = budget - (rc_cost if first_rc else 0.0)
            steps = max(1, round(left / rates["hard" if kd is None else "kd"]))
            run_id = f"{prefix}{name}-lr{lr:g}{seed}"
            specs.append(_spec(run_id, model, method, steps, seed=args.seed, **parts))
    return specs


# ----- seconds per step, interleaved -----------------------------------------------------


def timing(args, profile: Profile, repeats: int = 4) -> dict[str, Any]:
    """Seconds per step of hard, kd and one block of reconstruction, interleaved in one process.

    Each repeat times every method single-threaded (CPU seconds: what the runs
    record) and with the default threads (wall seconds: what a user waits), so
    all of them see the same load; medians are kept. `factor` converts a run's
    single-thread CPU seconds into wall seconds at the default threads.
    """
    import torch

    from llmopt.calibrate import capture_block_inputs
    from llmopt.distill.losses import LossSpec
    from llmopt.distill.objective import DistillObjective
    from llmopt.models import load_tokenizer
    from llmopt.models.arch import ArchAdapter
    from llmopt.pipeline.formats import load_checkpoint
    from llmopt.reconstruct.block import Batch, train_block
    from llmopt.train.data import Layout, build_source
    from llmopt.train.objective import LMObjective
    from llmopt.train.optim import build_optimizer
    from llmopt.train.precision import Precision

    winners = _read(args.workdir / "winners.json") or {}
    kd = winners.get("kd", {}).get("kd", KD_BASE)
    rc = winners.get("rc", {}).get("rc", _rc(profile, profile.rc_steps[0], 1e-3))
    default_threads = args.default_threads
    tokenizer = load_tokenizer(TEACHER)
    student = load_checkpoint(args.workdir / "models" / "wanda-2of4").train()
    teacher = load_checkpoint(TEACHER)
    precision = Precision("bf16", torch.device("cpu"))
    hard, distill = LMObjective(), DistillObjective(LossSpec(**kd), len(tokenizer), teacher=teacher)
    distill.setup(student, torch.device("cpu"), precision)
    optimizer = build_optimizer(student, 1e-4, 0.1, (0.9, 0.95), [])
    data = build_source("pydoc", tokenizer, TRAIN["seq_len"], True, 0)
    data.configure(Layout(TRAIN["micro_batch_size"], 1))
    ids = data.next_step()[0]["input_ids"][:1].repeat(1, 1)
    calib_ids = torch.randint(
        0, len(tokenizer), (rc.get("calib_batch_size", 8), rc["calib_seq_len"])
    )
    inputs = capture_block_inputs(student, calib_ids, calib_ids.shape[0], torch.device("cpu"))
    block = ArchAdapter(student).blocks()[len(ArchAdapter(student).blocks()) // 2]
    batch = Batch(inputs.hidden[0], inputs.args[0], inputs.kwargs[0], inputs.hidden[0].clone())
    del ids

    def train_step(objective) -> None:
        step = data.next_step()[0]
        with precision.autocast():
            out = objective(student, step)
        out.loss_sum.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ops = {
        "hard": lambda: train_step(hard),
        "kd": lambda: train_step(distill),
        "rc_block_step": lambda: train_block(
            block, [batch], kind=rc.get("loss", "mse"), steps=1, lr=1e-4, max_grad_norm=1.0, seed=0
        ),
    }
    times: dict[str, dict[str, list[float]]] = {k: {"cpu_1": [], "wall_default": []} for k in ops}
    loads = [os.getloadavg()[0]]
    for op in ops.values():  # warm-up: first calls allocate
        op()
    for _ in range(repeats):
        for name, op in ops.items():
            torch.set_num_threads(1)
            c0, w0 = _clock()
            op()
            times[name]["cpu_1"].append(time.process_time() - c0)
            torch.set_num_threads(default_threads)
            c0, w0 = _clock()
            op()
            times[name]["wall_default"].append(time.perf_counter() - w0)
        loads.append(os.getloadavg()[0])
    out = {
        name: {
            "cpu_s_1_thread": statistics.median(t["cpu_1"]),
            "wall_s_default_threads": statistics.median(t["wall_default"]),
            "factor": statistics.median(t["wall_default"]) / statistics.median(t["cpu_1"]),
            "samples": t,
        }
        for name, t in times.items()
    }
    facts = {
        "steps": out,
        "default_threads": default_threads,
        "cpus": os.cpu_count(),
        "load_average": {"during": loads, "mean": statistics.fmean(loads)},
        "tokens_per_step": TRAIN["micro_batch_size"] * TRAIN["seq_len"],
        "block_step_tokens": int(calib_ids.numel()),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    _write(args.workdir / "timing.json", facts)
    return facts


# ----- the report ------------------------------------------------------------------------


def _factor(timing_facts: dict | None, kind: str) -> float | None:
    if not timing_facts:
        return None
    return timing_facts["steps"]["rc_block_step" if kind == "rc" else kind]["factor"]


def wall_estimate(run: dict[str, Any], point: dict[str, Any], timing_facts) -> float | None:
    """A point's cost in wall seconds at the timing machine's default threads."""
    rc_point = next((p for p in run["points"] if p["phase"] == "rc"), None)
    rc_cpu = rc_point["cpu_s"] if rc_point else 0.0
    train_cpu = point["cpu_s"] - rc_cpu if point["phase"] == "train" else 0.0
    if point["phase"] == "rc":
        rc_cpu = point["cpu_s"]
    f_rc, f_train = (
        _factor(timing_facts, "rc"),
        _factor(timing_facts, "kd" if "kd" in run["spec"] else "hard"),
    )
    if f_rc is None or f_train is None:
        return None
    return rc_cpu * f_rc + train_cpu * f_train


def at_budget(run: dict[str, Any] | None, budget: float) -> dict[str, Any] | None:
    """The last curve point whose CPU cost is within `budget`."""
    if not run:
        return None
    inside = [p for p in run["points"] if p["cpu_s"] <= budget]
    return inside[-1] if inside else None


def interpolate(run: dict[str, Any], cpu_s: float) -> float | None:
    """The run's score at `cpu_s` CPU seconds (log-linear between points; None outside)."""
    points = run["points"]
    for a, b in itertools.pairwise(points):
        if a["cpu_s"] <= cpu_s <= b["cpu_s"] and b["cpu_s"] > a["cpu_s"]:
            t = (cpu_s - a["cpu_s"]) / (b["cpu_s"] - a["cpu_s"])
            return math.exp((1 - t) * math.log(a["score"]) + t * math.log(b["score"]))
    return None


def describe(spec: dict[str, Any]) -> str:
    """A short label of a run's settings."""
    parts = []
    if "rc" in spec:
        rc = spec["rc"]
        parts.append(
            f"rc {rc['steps']} steps/block lr {rc['lr']:g} {rc['loss']} "
            f"{rc['calib_samples']}x{rc['calib_seq_len']}"
        )
    if spec.get("steps"):
        train = {**TRAIN, **spec.get("train", {})}
        sched = "const" if train.get("min_lr_ratio") == 1.0 else "cosine"
        parts.append(f"lr {train['lr']:g} {sched}")
    if "kd" in spec:
        kd = spec["kd"]
        parts.append(f"{kd['divergence']} T={kd['temperature']:g} alpha={kd['alpha']:g}")
    if "hidden" in spec:
        parts.append(f"+ hidden {spec['hidden']['kind']} x{spec['hidden']['weight']:g}")
    return ", ".join(parts)


def report(args, profile: Profile) -> dict[str, Any]:
    """Print the tables and write every result into one JSON file."""
    models = _read(args.workdir / "models.json") or {}
    timing_facts = _read(args.workdir / "timing.json")
    runs = {p.stem: _read(p) for p in sorted((args.workdir / "runs").glob("*.json"))}
    dense = models.get("dense", {}).get("score", {}).get("score")
    print(
        f"\nheld-out score = geometric mean of pydoc-val and stdlib-doc perplexity "
        f"({profile.eval_tokens} tokens each, windows of {profile.eval_seq_len})"
    )
    print(f"{'model':14s} {'pydoc-val':>10s} {'stdlib-doc':>10s} {'score':>9s} {'x dense':>8s}")
    for name, facts in models.items():
        s = facts["score"]
        print(
            f"{name:14s} {s['pydoc-val']:10.3f} {s['stdlib-doc']:10.3f} {s['score']:9.3f} "
            f"{s['score'] / dense:8.3f}"
        )
    if timing_facts:
        print(
            f"\nseconds per step (timing, load average {timing_facts['load_average']['mean']:.2f}"
            f" on {timing_facts['cpus']} CPUs, {timing_facts['when']})"
        )
        for name, t in timing_facts["steps"].items():
            print(
                f"  {name:14s} cpu 1 thread {t['cpu_s_1_thread']:7.2f}   wall "
                f"{timing_facts['default_threads']} threads {t['wall_s_default_threads']:7.2f}"
                f"   factor {t['factor']:.2f}"
            )
    print("\ncurves (score after each evaluation; cost in single-thread CPU seconds)")
    print(
        f"{'run':34s} {'step':>5s} {'tokens':>8s} {'cpu_s':>8s} {'wall~':>8s} {'score':>8s}"
        f" {'x dense':>7s}  settings"
    )
    for run_id, run in runs.items():
        if not run:
            continue
        for i, p in enumerate(run["points"]):
            wall = wall_estimate(run, p, timing_facts)
            label = describe(run["spec"]) if i == 0 else ""
            print(
                f"{run_id if i == 0 else '':34s} {p['step']:5d} {p['tokens']:8d} "
                f"{p['cpu_s']:8.1f} {wall if wall is not None else float('nan'):8.1f} "
                f"{p['score']:8.3f} {p['score'] / dense:7.3f}  {p['phase']} {label}"
            )
    summary = budget_summary(runs, models, profile, dense)
    out = {
        "python": sys.version.split()[0],
        "heldout": "pydoc validation split + stdlib module docstrings (see the module docstring)",
        "profile": profile.__dict__,
        "models": models,
        "timing": timing_facts,
        "runs": runs,
        "summary": summary,
    }
    _write(Path(args.json), out)
    print(f"\nwrote {args.json}")
    return out


def budget_summary(runs, models, profile: Profile, dense: float | None) -> dict[str, Any]:
    """Per model: each method's score within the CPU budget, and kd against hard at equal cost."""
    print(f"\nwithin {profile.budget_cpu_s:.0f} single-thread CPU seconds of recovery")
    summary: dict[str, Any] = {}
    for model in models:
        if model == "dense":
            continue
        row: dict[str, Any] = {}
        for method in ("hard", "kd", "rc+kd"):
            for seed in ("", "-seed1"):
                run = runs.get(f"full-{model}-{method}{seed}")
                point = at_budget(run, profile.budget_cpu_s)
                if point is None:
                    continue
                row[method + seed] = {
                    "score": point["score"],
                    "x_dense": point["score"] / dense,
                    "cpu_s": point["cpu_s"],
                    "step": point["step"],
                }
                print(
                    f"  {model:14s} {method + seed:12s} score {point['score']:8.3f}  "
                    f"x{point['score'] / dense:6.3f} dense  ({point['cpu_s']:.0f} cpu s, "
                    f"step {point['step']})"
                )
        hard = runs.get(f"full-{model}-hard")
        for method in ("kd", "rc+kd"):
            run = runs.get(f"full-{model}-{method}")
            if not (run and hard):
                continue
            pairs = [
                (p["cpu_s"], p["score"], interpolate(hard, p["cpu_s"]))
                for p in run["points"]
                if p["phase"] == "train"
            ]
            pairs = [(c, s, h) for c, s, h in pairs if h is not None]
            row[f"{method}_vs_hard"] = [{"cpu_s": c, method: s, "hard": h} for c, s, h in pairs]
            if pairs:
                wins = sum(s < h for _, s, h in pairs)
                print(
                    f"  {model:14s} {method} better than hard at equal cost at {wins} of "
                    f"{len(pairs)} points"
                )
        summary[model] = row
    return summary


# ----- plumbing --------------------------------------------------------------------------


def say(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--phase",
        default="all",
        choices=["all", "prepare", "grid", "full", "timing", "report", "compare"],
    )
    p.add_argument("--budget-cpu", type=float, default=450.0, help="compare: CPU s per curve")
    p.add_argument("--lr", type=float, default=3e-4, help="compare: the learning rate")
    p.add_argument("--evals", type=int, default=5, help="compare: curve points per run")
    p.add_argument("--seed", type=int, default=0, help="compare: the runs' seed (data order, init)")
    p.add_argument(
        "--methods",
        default=None,
        help=f"compare: some of {','.join(COMPARE)} (default: {','.join(COMPARE_DEFAULT)})",
    )
    p.add_argument(
        "--models",
        default=None,
        help="prepare and compare: some of wanda-2of4,sparsegpt-50,share-20,slim-80 "
        "(default: prepare all, compare wanda-2of4)",
    )
    p.add_argument("--quick", action="store_true", help="tiny horizons and data (minutes)")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="models and run results (default: benchmarks/results/recovery[-quick])",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (child processes)")
    p.add_argument("--json", default=None, help="the report (default: WORKDIR/recovery.json)")
    p.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    """Run the phases asked for."""
    args = _parse()
    profile = QUICK if args.quick else FULL
    if args.workdir is None:
        args.workdir = HERE / "results" / ("recovery-quick" if args.quick else "recovery")
    args.workdir = args.workdir.resolve()
    args.json = args.json or str(args.workdir / "recovery.json")
    import torch

    from llmopt.models.compat import quiet_transformers

    quiet_transformers()
    args.default_threads = torch.get_num_threads()
    if args.run_one is not None:
        torch.set_num_threads(args.threads)
        spec = json.loads(args.run_one)
        result = run_one(spec, args, profile)
        _write(args.workdir / "runs" / f"{spec['id']}.json", result)
        return
    phases = (
        ["prepare", "grid", "full", "timing", "report"] if args.phase == "all" else [args.phase]
    )
    for phase in phases:
        say(f"== {phase}")
        if phase == "prepare":
            torch.set_num_threads(args.threads)
            prepare(args, profile)
            torch.set_num_threads(args.default_threads)
        elif phase == "grid":
            run_grid(args, profile)
        elif phase == "full":
            run_full(args, profile)
        elif phase == "timing":
            timing(args, profile)
        elif phase == "compare":
            launch_all(compare_specs(args, profile), args)
        else:
            report(args, profile)


if __name__ == "__main__":
    main()
