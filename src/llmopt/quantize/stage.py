"""`quantize` as a stage: weight-only RTN or GPTQ, optionally pruning in the same pass.

RTN rounds every weight to its grid (no data). GPTQ walks the decoder blocks
with calibration data (the sequential engine: block i+1 sees the already
quantized block i) and rounds column by column, spreading each rounding error
over the columns not yet rounded; with --sparsity or --pattern it also prunes
in the same walk (SparseGPT's masks). Zeros of an already sparse model stay
zero. The output is stored in the compact "quantized" format (packed codes,
float16 scales, zero points and a sparsity bitmask where smaller) unless
another --save-format is asked for; `llmopt export` turns it into GGUF or
compressed-tensors.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from llmopt.errors import BadInput
from llmopt.quantize.check import check_quantize, resolve_group_size
from llmopt.quantize.config import QuantizeConfig
from llmopt.quantize.run import quantize_model
from llmopt.stage import ModelSource, Stage, StageContext, StageResult


class QuantizeStage(Stage):
    """Weight quantization (RTN, GPTQ), joint with sparsity."""

    name = "quantize"
    help = "quantize weights to 8 or 4 bits (RTN, GPTQ; joint with 2:4 or unstructured sparsity)"
    config_class = QuantizeConfig
    output_format = "quantized"

    config: QuantizeConfig

    def check(self, source: ModelSource) -> None:
        """Bits, groups, patterns and targets against the model's widths; not a shared model."""
        if source.format == "shared":
            raise BadInput(
                f"{source.spec}: quantizing a model whose layers share tensors is not supported"
            )
        self.config = resolve_group_size(source.hf_config, self.config)
        check_quantize(source.hf_config, self.config)

    def apply(self, model: nn.Module, tokenizer, ctx: StageContext) -> StageResult:
        facts = quantize_model(
            model, tokenizer, self.config, device=ctx.device, progress=self.config.progress
        )
        return StageResult(model, {"quantize": facts})

    def summary(self, record: dict[str, Any]) -> list[tuple[str, str]]:
        q = record["metrics"]["quantize"]
        group = q["group_size"] or "per channel"
        grid = f"{q['bits']}-bit, groups of {group}, {'symmetric' if q['symmetric'] else 'asym'}"
        rows = [
            ("method", f"{q['method']}, {grid}, {q['bits_per_weight']} bits/weight"),
            ("quantized", f"{q['quantized_modules']} modules, {q['quantized_weights']:,} weights"),
        ]
        if q.get("joint_pattern"):
            rows.append(("joint pruning", f"{q['joint_pattern']}, sparsity {q['sparsity']:.4f}"))
        rows.append(("quantizing time", f"{q['calibration_s'] + q['quantize_s']:.1f} s"))
        return rows
