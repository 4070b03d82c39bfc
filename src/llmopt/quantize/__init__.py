"""Weight quantization: round to nearest (RTN) and GPTQ, optionally joint with pruning.

- `config.QuantizeConfig`: the stage's settings (one field per flag).
- `check.check_quantize` / `run.quantize_model`: the cheap check and the work.
- `storage`: the compact "quantized" checkpoint format (packed codes, scales,
  zero points, a sparsity bitmask when it pays).
- `grid`, `gptq`: the pure tensor functions underneath.
"""

from llmopt.quantize.check import check_quantize
from llmopt.quantize.config import QuantizeConfig
from llmopt.quantize.run import quantize_model
from llmopt.quantize.state import QuantState, is_quantized, quantized_modules

__all__ = [
    "QuantState",
    "QuantizeConfig",
    "check_quantize",
    "is_quantized",
    "quantize_model",
    "quantized_modules",
]
