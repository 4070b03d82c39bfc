"""The distillation stage: the training stage with `DistillObjective` as its objective.

Order matters for the user: every check that can fail on bad input (output
folder, vocabularies, layer map, cache compatibility) runs before any model
is trained; the offline cache is made once, in a single process, before
`nproc` workers start, so every training process reads the same finished
cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmopt.distill.config import DistillConfig
from llmopt.distill.hidden import HiddenStateLoss, default_layer_map, parse_layer_map
from llmopt.distill.losses import LossSpec, default_chunk_tokens
from llmopt.distill.objective import DistillObjective
from llmopt.distill.teacher import (
    META_FILE,
    TeacherCache,
    build_teacher_cache,
    freeze_teacher,
    open_cache_for,
    read_cache_meta,
    visited_rows,
)
from llmopt.distill.vocab import (
    check_cached_vocabulary,
    shared_vocab_size,
    vocabulary_fingerprint,
)
from llmopt.errors import BadInput
from llmopt.outputs import staged_output
from llmopt.stage import ModelSource, StageContext, StageResult
from llmopt.train.callbacks import Callback
from llmopt.train.stage import TrainStage
from llmopt.train.tracking import METRICS_FILE
from llmopt.units import human_bytes


def _model_config(spec: str):
    from llmopt.models import resolve_model
    from llmopt.models.loading import read_config

    return read_config(resolve_model(spec), spec)


def _check_teacher_config(spec: str) -> None:
    """The teacher exists and its config.json describes a model that fits in memory.

    Raises:
        BadInput: it does not resolve, its config is unreadable, or it is too large.
    """
    from llmopt.models.validate import check_config

    check_config(_model_config(spec), f"--teacher {spec}")


def _needed_rows(cfg: DistillConfig, num_rows: int, world_size: int) -> list[int]:
    per_step = cfg.micro_batch_size * cfg.grad_accum * world_size
    return visited_rows(num_rows, per_step, cfg.steps, cfg.seed)


def _training_rows(cfg: DistillConfig, tokenizer) -> list[torch.Tensor]:
    from llmopt.train.data import build_source

    return build_source(cfg.data, tokenizer, cfg.seq_len, cfg.pack, cfg.seed, cfg.text_field).rows


def _precision(cfg: DistillConfig, device: torch.device):
    from llmopt.train.precision import Precision, resolve_precision

    return Precision(resolve_precision(cfg.precision, device), device)


def _load_teacher(dcfg: DistillConfig, student_tokenizer, student_config, load_model):
    """The teacher model (fp32, on the CPU), its tokenizer, and the shared vocabulary size.

    Raises:
        BadInput: no teacher, vocabularies that differ, or a teacher whose weights
            hold NaN or infinite values (it would teach NaN, silently).
    """
    from llmopt.models import load_tokenizer
    from llmopt.models.validate import check_finite_weights

    if dcfg.teacher is None:
        raise BadInput("--teacher is required (unless --cache-teacher names a finished cache)")
    tokenizer = load_tokenizer(dcfg.teacher)
    teacher_config = _model_config(dcfg.teacher)
    vocab = shared_vocab_size(
        student_tokenizer, tokenizer, student_config.vocab_size, teacher_config.vocab_size
    )
    teacher = load_model(dcfg.teacher)
    check_finite_weights(teacher, f"--teacher {dcfg.teacher}")
    return teacher, tokenizer, vocab


def ensure_teacher_cache(cfg: DistillConfig, ctx: StageContext) -> Path | None:
    """Make the offline cache if `cache_teacher` names a folder without one.

    Only the rows that a run of this many steps, rows per step and seed
    visits are stored (`ctx.processes` processes). Returns the cache folder
    (None without a cache). The cache is written into a temporary sibling and
    renamed (`staged_output`), so an interrupted run leaves no half cache that a
    later run would trust.

    Raises:
        BadInput: the folder holds something else, the vocabularies differ, or a
            missing cache is asked for inside a multi-process launch.
    """
    from llmopt.models import load_tokenizer

    if cfg.cache_teacher is None:
        return None
    folder = Path(cfg.cache_teacher).expanduser()
    if read_cache_meta(folder) is not None:
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInput(f"--cache-teacher {folder}: exists and is not a teacher cache")
    if "RANK" in os.environ:
        raise BadInput(
            f"--cache-teacher {folder}: no cache yet; make it with one process first "
            "(the same command without torchrun; --nproc makes it before launching)"
        )
    student_tokenizer = load_tokenizer(ctx.source.spec)
    teacher, teacher_tokenizer, vocab = _load_teacher(
        cfg, student_tokenizer, ctx.source.hf_config, ctx.load_model
    )
    rows = _training_rows(cfg, student_tokenizer)
    precision = _precision(cfg, ctx.device)
    freeze_teacher(teacher, precision.device, None)
    teacher_metrics = ctx.measure(teacher, teacher_tokenizer)
    freeze_teacher(teacher, precision.device, precision.dtype)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_output(folder) as tmp:
        build_teacher_cache(
            teacher,
            rows,
            tmp,
            indices=_needed_rows(cfg, len(rows), ctx.processes),
            teacher_name=cfg.teacher,
            k=cfg.cache_k,
            temperature=cfg.temperature,
            vocab_size=vocab,
            vocab_fingerprint=vocabulary_fingerprint(teacher_tokenizer),
            pad_id=student_tokenizer.pad_token_id,
            batch_size=cfg.cache_batch_size,
            progress=cfg.progress,
            autocast=precision.autocast,
            teacher_metrics=teacher_metrics,
        )
    return folder


@dataclass
class DistillSetup:
    """Everything the training stage needs, plus what the record should say."""

    objective: DistillObjective
    callbacks: list[Callback]
    teacher_metrics: dict[str, Any] | None
    summary: dict[str, Any]


def _hidden_loss(dcfg: DistillConfig, student_config, teacher_config) -> HiddenStateLoss | None:
    if dcfg.hidden_loss is None:
        if dcfg.layer_map is not None:
            raise BadInput("--layer-map needs --hidden-loss mse|cosine")
        return None
    s_layers, t_layers = student_config.num_hidden_layers, teacher_config.num_hidden_layers
    pairs = (
        parse_layer_map(dcfg.layer_map, s_layers, t_layers)
        if dcfg.layer_map
        else default_layer_map(s_layers, t_layers)
    )
    return HiddenStateLoss(
        pairs, student_config.hidden_size, teacher_config.hidden_size, kind=dcfg.hidden_loss
    )


def prepare_distillation(dcfg: DistillConfig, ctx: StageContext, student_tokenizer) -> DistillSetup:
    """Check the inputs and build the objective (online teacher or cache).

    Raises:
        BadInput: vocabulary mismatch, bad layer map, incompatible cache, missing teacher.
    """
    student_config = ctx.source.hf_config
    loss = LossSpec(
        divergence=dcfg.loss,
        temperature=dcfg.temperature,
        beta=dcfg.beta,
        alpha=dcfg.alpha,
        chunk_tokens=dcfg.chunk_tokens or default_chunk_tokens(ctx.device),
    )
    summary: dict[str, Any] = {
        "teacher": dcfg.teacher,
        "loss": dcfg.loss,
        "temperature": dcfg.temperature,
        "alpha": dcfg.alpha,
        "beta": dcfg.beta if dcfg.loss == "jsd" else None,
    }
    folder = Path(dcfg.cache_teacher).expanduser() if dcfg.cache_teacher else None
    if folder is not None:
        if dcfg.hidden_loss is not None:
            raise BadInput("--hidden-loss needs the online teacher (the cache holds no states)")
        cache = _open_cache(folder, dcfg, ctx, student_tokenizer, student_config)
        summary |= {"teacher": cache.meta.teacher, "source": "cache", "cache": _cache_facts(cache)}
        objective = DistillObjective(loss, cache.meta.vocab_size, cache=cache)
        return DistillSetup(objective, [], cache.meta.teacher_metrics, summary)
    teacher, teacher_tokenizer, vocab = _load_teacher(
        dcfg, student_tokenizer, student_config, ctx.load_model
    )
    # Seeded: every process (and every rerun) must start from the same projections,
    # which live outside the model and so are not broadcast by DDP/FSDP.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(dcfg.seed)
        hidden = _hidden_loss(dcfg, student_config, teacher.config)
    teacher_metrics = ctx.measure(teacher, teacher_tokenizer) if ctx.is_main else None
    objective = DistillObjective(
        loss, vocab, teacher=teacher, hidden=hidden, hidden_weight=dcfg.hidden_weight
    )
    # The projections' gradients are averaged over processes by the trainer itself
    # (objective-owned parameters), like the model's.
    callbacks: list[Callback] = []
    summary |= {"source": "online", "vocab_size": vocab}
    if hidden is not None:
        summary |= {
            "hidden_loss": hidden.kind,
            "hidden_weight": dcfg.hidden_weight,
            "layer_map": hidden.layer_map,
            "projections": bool(objective.extra_parameters()),
        }
    return DistillSetup(objective, callbacks, teacher_metrics, summary)


def _open_cache(
    folder: Path, dcfg: DistillConfig, ctx: StageContext, student_tokenizer, student_config
) -> TeacherCache:
    meta = read_cache_meta(folder)
    if meta is None:
        raise BadInput(f"--cache-teacher {folder}: no teacher cache there ({META_FILE} missing)")
    if dcfg.teacher is not None and dcfg.teacher != meta.teacher:
        raise BadInput(
            f"--cache-teacher {folder}: made from {meta.teacher!r}, not {dcfg.teacher!r}"
        )
    check_cached_vocabulary(student_tokenizer, meta.vocab_fingerprint, student_config.vocab_size)
    rows = _training_rows(dcfg, student_tokenizer)
    needed = _needed_rows(dcfg, len(rows), ctx.processes)
    return open_cache_for(folder, rows, dcfg.temperature, meta.vocab_fingerprint, needed)


def _cache_facts(cache: TeacherCache) -> dict[str, Any]:
    meta = cache.meta
    disk = sum(f.stat().st_size for f in cache.folder.iterdir() if f.is_file())
    return {
        "folder": str(cache.folder),
        "k": meta.k,
        "positions": meta.tokens,
        "rows": meta.rows,
        "cached_rows": meta.cached_rows,
        "disk_bytes": disk,
        "bytes_per_token": round(disk / max(meta.tokens, 1), 2),
        "outside_topk": "remainder bucket (exact teacher mass, not renormalised)",
        "mass_outside_topk": meta.mass_outside_topk,
    }


class DistillStage(TrainStage):
    """Knowledge distillation: the training stage with a teacher's distribution as target."""

    name = "distill"
    help = "distil a teacher into a student (KL / reverse KL / JSD, hidden states, top-k cache)"
    config_class = DistillConfig

    config: DistillConfig
    setup: DistillSetup | None = None

    def check(self, source: ModelSource) -> None:
        """The training checks, and the combinations of teacher, cache and hidden states."""
        super().check(source)
        cfg = self.config
        if cfg.layer_map is not None and cfg.hidden_loss is None:
            raise BadInput("--layer-map needs --hidden-loss mse|cosine")
        if cfg.cache_teacher is not None:
            folder = Path(cfg.cache_teacher).expanduser()
            if cfg.hidden_loss is not None:
                raise BadInput("--hidden-loss needs the online teacher (the cache holds no states)")
            exists = read_cache_meta(folder) is not None
            if not exists and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
                raise BadInput(f"--cache-teacher {folder}: exists and is not a teacher cache")
            if not exists and cfg.teacher is None:
                raise BadInput("--teacher is required to make the cache --cache-teacher names")
        elif cfg.teacher is None:
            raise BadInput("--teacher is required (unless --cache-teacher names a finished cache)")
        cached = (
            cfg.cache_teacher is not None and read_cache_meta(Path(cfg.cache_teacher)) is not None
        )
        if cfg.teacher is not None and not cached:
            _check_teacher_config(cfg.teacher)

    def before_launch(self, ctx: StageContext) -> None:
        """Check the data, then make the teacher cache once, before the workers start."""
        super().before_launch(ctx)
        ensure_teacher_cache(self.config, ctx)

    def objective(self, model, tokenizer, ctx: StageContext):
        ensure_teacher_cache(self.config, ctx)
        self.setup = prepare_distillation(self.config, ctx, tokenizer)
        return self.setup.objective, self.setup.callbacks

    def finalize(self, model, folder: Path, result: StageResult) -> None:
        """Add the teacher's measurement and the loss curves to the record."""
        super().finalize(model, folder, result)
        assert self.setup is not None
        result.metrics["teacher"] = self.setup.teacher_metrics
        result.metrics["distill"] = {**self.setup.summary, "curve": _curve(folder / METRICS_FILE)}

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        rows = super().summary(record)
        metrics = record["metrics"]
        info = metrics["distill"]
        rows.append(("teacher", f"{info['teacher']} ({info['source']})"))
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
                    f"k={c['k']}, {human_bytes(c['disk_bytes'])}, "
                    f"{c['bytes_per_token']:.0f} B/token, "
                    f"{100 * (c['mass_outside_topk'] or 0):.1f}% of the mass outside the top k",
                )
            )
        return rows


def _curve(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    keys = ("step", "loss", "kd", "ce", "hidden")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: row[k] for k in keys if k in row} for row in rows]
