"""Block-wise reconstruction: each decoder block of a compressed model learns its teacher's.

- `config`: `ReconstructConfig`, the stage's fields.
- `layers`: which teacher block's output each student block reproduces.
- `block`: the loss of one block and its few Adam steps (zeros kept).
- `teacher`: the teacher's block outputs, walked forward one block at a time.
- `run`: `reconstruct_model`, the sequential walk (errors upstream are
  compensated downstream; layers sharing tensors replay each other's data).
- `stage`: `ReconstructStage`.
"""

from llmopt.reconstruct.config import ReconstructConfig
from llmopt.reconstruct.run import BlockFit, reconstruct_model

__all__ = ["BlockFit", "ReconstructConfig", "reconstruct_model"]
