"""`prune` as a stage: zero weights of the decoder-block linears, and record what it cost.

Methods: magnitude (|W|), wanda (|W| * ||X||, needs calibration data),
sparsegpt (OBS weight updates, needs calibration data). Patterns: unstructured
or N:M (N zeros in every M consecutive inputs, e.g. 2:4). --owl spreads the
sparsity unevenly across blocks (fewer zeros where activations have outliers),
keeping the average. Records the sparsity of every block and linear, the
perplexity before and after on held-out text, and the time taken.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from llmopt.models.arch import spec_for
from llmopt.prune.config import PruneConfig, check_config
from llmopt.prune.registry import PRUNERS
from llmopt.prune.run import PreparedPrune, prepare_pruning, run_pruning
from llmopt.stage import ModelSource, Stage, StageContext, StageResult


class PruneStage(Stage):
    """Weight pruning: magnitude, Wanda, SparseGPT; unstructured or N:M; OWL."""

    name = "prune"
    help = "prune weights (magnitude, wanda, sparsegpt; unstructured or N:M; OWL)"
    config_class = PruneConfig

    config: PruneConfig
    prepared: PreparedPrune | None = None

    def check(self, source: ModelSource) -> None:
        """Method, scope, amount and pattern; the family; 2:4 acceleration needs CUDA."""
        from llmopt.errors import BadInput
        from llmopt.prune.semistructured import check_semi_structured
        from llmopt.runtime import pick_device

        cfg = self.config
        check_config(cfg, {name: cls.scopes for name, cls in PRUNERS.items()})
        spec_for(source.hf_config.model_type)
        if cfg.accelerate_2to4:
            check_semi_structured(pick_device(cfg.device), cfg.parsed_pattern())
            if cfg.offload:
                raise BadInput("--accelerate-2to4: the model must be on the GPU; drop --offload")

    def load_device(self, device):
        return None if self.config.offload else device

    def prepare(self, model: nn.Module, tokenizer, ctx: StageContext) -> None:
        """Select the linears (N:M must tile them) and sample the calibration blocks."""
        self.prepared = prepare_pruning(
            model, tokenizer, self.config, device=ctx.device, progress=self.config.progress
        )

    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        assert self.prepared is not None
        result = run_pruning(model, self.prepared)
        return StageResult(model, {"prune": result.as_dict()})

    def finalize(self, model: nn.Module, folder: Path, result: StageResult) -> None:
        """With --accelerate-2to4, measure the saved model with the sparse kernels."""
        if not self.config.accelerate_2to4:
            return
        from llmopt.prune.semistructured import to_semi_structured

        assert self.prepared is not None
        linears = [m for group in self.prepared.plan.targets.values() for m in group.values()]
        model.half()
        result.metrics["semi_structured_layers"] = to_semi_structured(linears)

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        prune = record["metrics"]["prune"]
        rows = [
            (f"block {i}", f"{100 * reached:6.2f}%  (target {100 * target:.2f}%)")
            for i, (reached, target) in enumerate(
                zip(prune["block_sparsity"], prune["block_target"], strict=True)
            )
            if reached is not None
        ]
        rows.append(
            (
                "overall",
                f"{100 * prune['sparsity']:.2f}% of {prune['pruned_weights']:,} weights in "
                f"{len(prune['layer_sparsity'])} linears",
            )
        )
        rows.append(("pruning time", f"{prune['calibration_s'] + prune['prune_s']:.1f} s"))
        return rows
