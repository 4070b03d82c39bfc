"""`reconstruct` as a stage: each block of a compressed model learns its teacher block's output.

Cheap recovery before (or instead of) end-to-end distillation: no full
forward or backward pass, no LM head, a few thousand calibration tokens,
one block in memory at a time on the compute device. Pruned zeros stay zero,
shared tensors stay shared, a slimmed model keeps its shape (see
`llmopt.reconstruct.layers` for how a shallower student's blocks map to the
teacher's).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llmopt.calibrate.data import Calibration, load_calibration
from llmopt.errors import BadInput
from llmopt.models.arch import spec_for
from llmopt.reconstruct.config import ReconstructConfig
from llmopt.reconstruct.layers import choose_layer_map
from llmopt.reconstruct.run import BlockFit, reconstruct_model
from llmopt.stage import ModelSource, Stage, StageContext, StageResult


def _teacher_config(spec: str):
    from transformers import AutoConfig

    from llmopt.models import resolve_model

    try:
        return AutoConfig.from_pretrained(resolve_model(spec))
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"--teacher {spec}: cannot read its config ({err})") from None


class ReconstructStage(Stage):
    """Block-wise reconstruction against a teacher (MSE or cosine on block outputs)."""

    name = "reconstruct"
    help = "fit each block to the teacher's block output on calibration data (keeps zeros, ties)"
    config_class = ReconstructConfig

    config: ReconstructConfig
    teacher: nn.Module | None = None
    calibration: Calibration | None = None
    targets: list[int] | None = None
    how: str = ""
    teacher_metrics: dict[str, Any] | None = None

    def check(self, source: ModelSource) -> None:
        """A teacher of the same width and family support, calibration data, the layer map."""
        cfg = self.config
        if cfg.teacher is None:
            raise BadInput("--teacher is required (the model to reconstruct towards)")
        if cfg.calib_data is None:
            raise BadInput("reconstruct needs calibration data; --calib-data none was given")
        student = source.hf_config
        teacher = _teacher_config(cfg.teacher)
        spec_for(student.model_type)
        spec_for(teacher.model_type)
        if student.hidden_size != teacher.hidden_size:
            raise BadInput(
                f"--teacher {cfg.teacher}: hidden size {teacher.hidden_size}, the student's is "
                f"{student.hidden_size} (block outputs must have the same width)"
            )
        choose_layer_map(
            cfg.layer_map, student.num_hidden_layers, teacher.num_hidden_layers, source.record
        )

    def prepare(self, model: nn.Module, tokenizer, ctx: StageContext) -> None:
        """Check the tokenizers agree, load the teacher and the calibration blocks."""
        from llmopt.data.corpus import tokenizer_fingerprint
        from llmopt.models import load_tokenizer
        from llmopt.models.arch import ArchAdapter

        cfg = self.config
        assert cfg.teacher is not None
        teacher_tokenizer = load_tokenizer(cfg.teacher)
        if tokenizer_fingerprint(teacher_tokenizer) != tokenizer_fingerprint(tokenizer):
            raise BadInput(
                f"--teacher {cfg.teacher}: its tokenizer differs from the student's "
                "(the teacher must read the same token ids)"
            )
        self.calibration = load_calibration(
            cfg, tokenizer, model, ctx.device, cfg.progress, why="reconstruct"
        )
        self.teacher = ctx.load_model(cfg.teacher)
        self.teacher.requires_grad_(False)
        self.targets, self.how = choose_layer_map(
            cfg.layer_map,
            ArchAdapter(model).num_layers,
            ArchAdapter(self.teacher).num_layers,
            ctx.source.record,
        )
        self.teacher_metrics = ctx.measure(self.teacher, teacher_tokenizer)

    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        assert self.teacher is not None and self.calibration is not None and self.targets
        cfg = self.config
        fit = BlockFit(cfg.steps, cfg.lr, cfg.loss, cfg.max_grad_norm, cfg.seed)
        facts = reconstruct_model(model.float(), self.teacher, self.calibration, self.targets, fit)
        facts["layer_map"] = {"targets": self.targets, "how": self.how}
        facts["loss"] = cfg.loss
        self.teacher = None  # free it before the output is measured
        metrics: dict[str, Any] = {"reconstruct": facts}
        if self.teacher_metrics is not None:
            metrics["teacher"] = self.teacher_metrics
        return StageResult(model, metrics)

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        facts = record["metrics"]["reconstruct"]
        args = record["args"]
        how = facts["layer_map"]["how"]
        rows = [
            ("teacher", str(args["teacher"])),
            (
                "blocks",
                f"{len(facts['blocks'])}, {args['steps']} steps each "
                f"(lr {args['lr']:g}, {facts['loss']} loss), layer map: {how}",
            ),
            (
                "block loss",
                f"{facts['mean_loss_before']:.4f} -> {facts['mean_loss_after']:.4f} "
                "(mean over blocks)",
            ),
            (
                "calibration",
                f"{facts['calibration']['samples']} x {facts['calibration']['seq_len']} tokens",
            ),
            ("reconstruction time", f"{facts['seconds']:.1f} s"),
        ]
        teacher = record["metrics"].get("teacher")
        if teacher:
            rows.append(("teacher perplexity", f"{teacher['perplexity']:.3f}"))
        return rows
