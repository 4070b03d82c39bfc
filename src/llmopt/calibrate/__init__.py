"""Calibration: the sequential block-by-block engine, input statistics, calibration data.

- `engine`: `run_sequential` walks the decoder blocks in order, feeding block
  i+1 the outputs of the already changed block i (see its docstring for why).
- `stats`: `watch_inputs` / `InputStats` collect X^T X or column norms of the
  inputs of a block's linears while the engine feeds it.
- `data`: `CalibrationSettings`, the fields every data-aware stage shares,
  and `load_calibration`, which samples the token blocks.
"""

from llmopt.calibrate.data import (
    COMPUTE_DTYPES,
    Calibration,
    CalibrationSettings,
    load_calibration,
    progress_printer,
)
from llmopt.calibrate.engine import (
    BlockHandler,
    BlockInputs,
    BlockStep,
    capture_block_inputs,
    run_sequential,
)
from llmopt.calibrate.stats import InputStats, input_groups, watch_inputs

__all__ = [
    "COMPUTE_DTYPES",
    "BlockHandler",
    "BlockInputs",
    "BlockStep",
    "Calibration",
    "CalibrationSettings",
    "InputStats",
    "capture_block_inputs",
    "input_groups",
    "load_calibration",
    "progress_printer",
    "run_sequential",
    "watch_inputs",
]
