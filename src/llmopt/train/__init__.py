"""The one training loop of llmopt: objectives, callbacks, precision, distribution."""

from llmopt.train.objective import (
    IGNORE_INDEX,
    LMObjective,
    Objective,
    ObjectiveOutput,
    count_label_tokens,
)

__all__ = [
    "IGNORE_INDEX",
    "LMObjective",
    "Objective",
    "ObjectiveOutput",
    "count_label_tokens",
]
