"""`slim` as a stage: remove MLP channels, attention heads or KV groups, and layers.

The result is a smaller dense model (the matrices themselves shrink), faster
on every device, written as an ordinary checkpoint that plain transformers
loads. Importance comes from calibration data through the sequential engine:
MLP channels by their mean activation (or a Taylor score), heads by their
contribution to the block output (per KV group for grouped-query attention),
layers by Block Influence (or the loss when skipped). --params P chooses the
widths and depth itself: it scores candidate shapes of that size by their KL
to the original on calibration tokens and keeps the best. Widths stay uniform
across layers (the families' configs hold one width for all layers).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llmopt.errors import BadInput
from llmopt.slim.check import check_slim
from llmopt.slim.config import SlimConfig
from llmopt.slim.run import slim_model
from llmopt.stage import ModelSource, Stage, StageContext, StageResult
from llmopt.units import human_count


class SlimStage(Stage):
    """Structural slimming: a smaller dense model, faster on any hardware."""

    name = "slim"
    help = "remove MLP channels, heads or KV groups, and layers (a smaller, faster dense model)"
    config_class = SlimConfig

    config: SlimConfig

    def check(self, source: ModelSource) -> None:
        """The cuts fit the model's shape and family; the input is dense or sparse."""
        if source.format not in ("dense", "sparse"):
            raise BadInput(
                f"{source.spec}: a {source.format} model cannot be slimmed; slim the "
                "original first, then share or quantize the slimmed model"
            )
        check_slim(source.hf_config, self.config)

    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        smaller, facts = slim_model(
            model, tokenizer, self.config, device=ctx.device, progress=self.config.progress
        )
        return StageResult(smaller, {"slim": facts})

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        facts = record["metrics"]["slim"]
        before, after = facts["shape_before"], facts["shape_after"]
        rows = [
            (
                "shape",
                f"layers {before['layers']} -> {after['layers']}, "
                f"ffn {before['ffn']} -> {after['ffn']}, "
                f"heads {before['heads']} -> {after['heads']} "
                f"(kv groups {before['kv_groups']} -> {after['kv_groups']})",
            ),
            (
                "parameters",
                f"{human_count(facts['params_before'])} -> {human_count(facts['params_after'])} "
                f"({100 * facts['params_kept']:.1f}% kept)",
            ),
        ]
        if facts["removed"]["layers"]:
            rows.append(("removed layers", str(facts["removed"]["layers"])))
        for candidate in sorted(
            (c for c in facts.get("candidates", []) if c.get("kl") is not None),
            key=lambda c: c["kl"],
        ):
            rows.append(("candidate", f"KL {candidate['kl']:.4f}  {candidate['label']}"))
        if "choice" in facts:
            rows.append(("chosen", facts["choice"]))
        return rows
