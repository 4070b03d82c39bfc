"""Every stage llmopt ships, by the name its verb and recipes use.

The pipeline is where techniques meet, so this is the one place that imports
them all; the order is the order of `llmopt --help`.
"""

from __future__ import annotations

from llmopt.distill.stage import DistillStage
from llmopt.evaluate.stage import EvalStage
from llmopt.prune.stage import PruneStage
from llmopt.quantize.stage import QuantizeStage
from llmopt.reconstruct.stage import ReconstructStage
from llmopt.share.stage import ShareStage
from llmopt.slim.stage import SlimStage
from llmopt.stage import Stage
from llmopt.train.stage import TrainStage

STAGES: dict[str, type[Stage]] = {
    cls.name: cls
    for cls in (
        EvalStage,
        PruneStage,
        SlimStage,
        QuantizeStage,
        ShareStage,
        TrainStage,
        DistillStage,
        ReconstructStage,
    )
}
