"""The one training loop of llmopt: objectives, callbacks, precision, distribution.

Entry points: `run_training(model, config, data, objective, callbacks, run_dir)`
trains a model in memory; `TrainStage` (`llmopt.train.stage`) is the whole
stage that `llmopt.pipeline.run_stage` runs (load, measure, train, save).
"""

from llmopt.train.callbacks import Callback
from llmopt.train.config import TrainConfig
from llmopt.train.data import RowSource, build_source
from llmopt.train.masks import KeepMasks
from llmopt.train.objective import (
    IGNORE_INDEX,
    LMObjective,
    Objective,
    ObjectiveOutput,
    count_label_tokens,
)
from llmopt.train.precision import Precision
from llmopt.train.trainer import (
    TooManySkippedSteps,
    Trainer,
    TrainingInterrupted,
    TrainResult,
    run_training,
)

__all__ = [
    "IGNORE_INDEX",
    "Callback",
    "KeepMasks",
    "LMObjective",
    "Objective",
    "ObjectiveOutput",
    "Precision",
    "RowSource",
    "TooManySkippedSteps",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "build_source",
    "count_label_tokens",
    "run_training",
]
