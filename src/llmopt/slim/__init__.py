"""Structural slimming: remove MLP channels, attention heads or KV groups, and whole layers.

Unlike sparsity, the result is a smaller *dense* model (the matrices shrink),
which is faster on every device and loads in plain transformers.

- `config`: `SlimConfig`, the stage's fields.
- `check`: `check_slim`, the cheap check from config.json alone.
- `shape`, `candidates`: shapes, exact parameter counts, the --params candidates.
- `importance`, `probes`: importance scores from calibration data.
- `plan`, `masking`, `surgery`: what to keep; running a plan as masks; carrying it out.
- `choose`, `run`: the --params choice, and `slim_model`, the stage's apply step.

Widths stay uniform across layers: the configs of the supported families hold
one MLP width and one head count for every layer, so every layer loses the
same number, each choosing its own by importance. GPT-2, OPT and GPT-NeoX
derive the head size from hidden_size / heads, so only their MLP channels and
layers can be slimmed; Llama, Qwen2 and Mistral can also lose heads.
"""

from llmopt.slim.check import check_slim
from llmopt.slim.config import SlimConfig
from llmopt.slim.run import slim_model

__all__ = ["SlimConfig", "check_slim", "slim_model"]
