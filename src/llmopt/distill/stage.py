"""The distillation stage: a training stage whose objective is `DistillObjective`.

Order matters for the user: every check that can fail on bad input (output
folder, vocabularies, layer map, cache compatibility) runs before any model
is trained; the offline cache is made once, in a single process, before
`--nproc` relaunches the command, so every training process reads the same
finished cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmopt.distill.config import DistillConfig
from llmopt.distill.hidden import HiddenStateLoss, default_layer_map, parse_layer_map
from llmopt.distill.losses import LossSpec
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
from llmopt.train.callbacks import Callback
from llmopt.train.stage import StageSpec
from llmopt.train.tracking import METRICS_FILE


def _model_config(spec: str):
    from transformers import AutoConfig

    from llmopt.models import resolve_model

    try:
        return AutoConfig.from_pretrained(resolve_model(spec))
    except (OSError, ValueError) as err:
        raise BadInput(f"{spec}: cannot read its config ({err})") from None


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _needed_rows(spec: StageSpec, num_rows: int, world_size: int) -> list[int]:
    cfg = spec.config
    per_step = cfg.micro_batch_size * cfg.grad_accum * world_size
    return visited_rows(num_rows, per_step, cfg.steps, cfg.seed)


def _training_rows(spec: StageSpec, tokenizer) -> list[torch.Tensor]:
    from llmopt.train.data import build_source

    cfg = spec.config
    return build_source(spec.data, tokenizer, cfg.seq_len, cfg.pack, cfg.seed, spec.text_field).rows


def _measure_teacher(teacher, tokenizer, spec: StageSpec) -> dict[str, Any] | None:
    from llmopt.evaluate.summary import evaluate_model

    if spec.evaluation is None:
        return None
    return evaluate_model(teacher, tokenizer, spec.evaluation)


def _precision(spec: StageSpec):
    from llmopt.runtime import pick_device
    from llmopt.train.precision import Precision, resolve_precision

    device = pick_device(spec.config.device)
    return Precision(resolve_precision(spec.config.precision, device), device)


def _load_teacher(dcfg: DistillConfig, student_tokenizer, student_config):
    """The teacher model (fp32, on the CPU), its tokenizer, and the shared vocabulary size."""
    from llmopt.models import load_model, load_tokenizer

    if dcfg.teacher is None:
        raise BadInput("--teacher is required (unless --cache-teacher names a finished cache)")
    tokenizer = load_tokenizer(dcfg.teacher)
    teacher_config = _model_config(dcfg.teacher)
    vocab = shared_vocab_size(
        student_tokenizer, tokenizer, student_config.vocab_size, teacher_config.vocab_size
    )
    return load_model(dcfg.teacher), tokenizer, vocab


def ensure_teacher_cache(
    spec: StageSpec, dcfg: DistillConfig, world_size: int | None = None
) -> Path | None:
    """Make the offline cache if `--cache-teacher` names a folder without one.

    Only the rows that a run of this many steps, rows per step and seed
    visits are stored (`world_size` processes; default: this launch's).
    Returns the cache folder (None without `--cache-teacher`). The cache is
    written into a temporary sibling and renamed, so an interrupted run leaves
    no half cache that a later run would trust.

    Raises:
        BadInput: the folder holds something else, the vocabularies differ, or a
            missing cache is asked for inside a multi-process launch.
    """
    from llmopt.models import load_tokenizer

    if dcfg.cache_teacher is None:
        return None
    folder = Path(dcfg.cache_teacher).expanduser()
    if read_cache_meta(folder) is not None:
        return folder
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BadInput(f"--cache-teacher {folder}: exists and is not a teacher cache")
    if "RANK" in os.environ:
        raise BadInput(
            f"--cache-teacher {folder}: no cache yet; make it with one process first "
            "(the same command without torchrun; --nproc makes it before launching)"
        )
    student_tokenizer = load_tokenizer(spec.model)
    teacher, teacher_tokenizer, vocab = _load_teacher(
        dcfg, student_tokenizer, _model_config(spec.model)
    )
    rows = _training_rows(spec, student_tokenizer)
    precision = _precision(spec)
    freeze_teacher(teacher, precision.device, None)
    teacher_metrics = _measure_teacher(teacher, teacher_tokenizer, spec)
    freeze_teacher(teacher, precision.device, precision.dtype)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        build_teacher_cache(
            teacher,
            rows,
            tmp,
            indices=_needed_rows(spec, len(rows), world_size or _world_size()),
            teacher_name=dcfg.teacher,
            k=dcfg.cache_k,
            temperature=dcfg.temperature,
            vocab_size=vocab,
            vocab_fingerprint=vocabulary_fingerprint(teacher_tokenizer),
            pad_id=student_tokenizer.pad_token_id,
            batch_size=dcfg.cache_batch_size,
            progress=spec.config.progress,
            autocast=precision.autocast,
            teacher_metrics=teacher_metrics,
        )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if folder.exists():
        folder.rmdir()  # checked empty above
    os.replace(tmp, folder)
    return folder


class AverageExtraGradients(Callback):
    """All-reduce the objective's own parameters' gradients across processes.

    DDP/FSDP synchronise only the model's gradients; the hidden-state
    projections live outside the model, so without this every process would
    train its own projection on its own shard of the data.
    """

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params

    def after_backward(self, trainer) -> None:
        """Average the gradients over processes (a no-op in a single process)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for p in self.params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(dist.get_world_size())


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


def prepare_distillation(spec: StageSpec, dcfg: DistillConfig) -> DistillSetup:
    """Check the inputs and build the objective (online teacher or cache).

    Raises:
        BadInput: vocabulary mismatch, bad layer map, incompatible cache, missing teacher.
    """
    from llmopt.models import load_tokenizer

    student_tokenizer = load_tokenizer(spec.model)
    student_config = _model_config(spec.model)
    loss = LossSpec(
        divergence=dcfg.loss,
        temperature=dcfg.temperature,
        beta=dcfg.beta,
        alpha=dcfg.alpha,
        chunk_tokens=dcfg.chunk_tokens,
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
        cache = _open_cache(folder, spec, dcfg, student_tokenizer, student_config)
        summary |= {"teacher": cache.meta.teacher, "source": "cache", "cache": _cache_facts(cache)}
        objective = DistillObjective(loss, cache.meta.vocab_size, cache=cache)
        return DistillSetup(objective, [], cache.meta.teacher_metrics, summary)
    teacher, teacher_tokenizer, vocab = _load_teacher(dcfg, student_tokenizer, student_config)
    # Seeded: every process (and every rerun) must start from the same projections,
    # which live outside the model and so are not broadcast by DDP/FSDP.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.config.seed)
        hidden = _hidden_loss(dcfg, student_config, teacher.config)
    teacher_metrics = None
    if _is_main_process():
        teacher_metrics = _measure_teacher(teacher, teacher_tokenizer, spec)
    objective = DistillObjective(
        loss, vocab, teacher=teacher, hidden=hidden, hidden_weight=dcfg.hidden_weight
    )
    callbacks: list[Callback] = []
    if objective.extra_parameters():
        callbacks.append(AverageExtraGradients(objective.extra_parameters()))
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
    folder: Path, spec: StageSpec, dcfg: DistillConfig, student_tokenizer, student_config
) -> TeacherCache:
    meta = read_cache_meta(folder)
    if meta is None:
        raise BadInput(f"--cache-teacher {folder}: no teacher cache there ({META_FILE} missing)")
    if dcfg.teacher is not None and dcfg.teacher != meta.teacher:
        raise BadInput(
            f"--cache-teacher {folder}: made from {meta.teacher!r}, not {dcfg.teacher!r}"
        )
    check_cached_vocabulary(student_tokenizer, meta.vocab_fingerprint, student_config.vocab_size)
    rows = _training_rows(spec, student_tokenizer)
    needed = _needed_rows(spec, len(rows), _world_size())
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


def run_distill_stage(spec: StageSpec, dcfg: DistillConfig) -> dict[str, Any] | None:
    """Distil into `spec.model` and write `spec.output`; returns the metrics on process 0.

    Raises:
        BadInput: any bad input, found before training starts.
        TrainingInterrupted: Ctrl-C (a checkpoint was saved in the run folder).
    """
    from llmopt.outputs import check_output
    from llmopt.train.stage import run_train_stage

    check_output(spec.output, spec.overwrite)
    ensure_teacher_cache(spec, dcfg)
    setup = prepare_distillation(spec, dcfg)

    def finalize(metrics: dict[str, Any], folder: Path) -> None:
        metrics["teacher"] = setup.teacher_metrics
        metrics["distill"] = {**setup.summary, "curve": _curve(folder / METRICS_FILE)}

    return run_train_stage(spec, setup.objective, setup.callbacks, finalize=finalize)


def _curve(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    keys = ("step", "loss", "kd", "ce", "hidden")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: row[k] for k in keys if k in row} for row in rows]
