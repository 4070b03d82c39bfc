"""Measurement: perplexity, footprint (parameters, non-zeros, bytes), speed, memory."""

from llmopt.evaluate.footprint import Footprint, checkpoint_bytes, model_footprint
from llmopt.evaluate.perplexity import Perplexity, evaluate_perplexity
from llmopt.evaluate.speed import Speed, measure_speed
from llmopt.evaluate.summary import EvalConfig, evaluate_model

__all__ = [
    "EvalConfig",
    "Footprint",
    "Perplexity",
    "Speed",
    "checkpoint_bytes",
    "evaluate_model",
    "evaluate_perplexity",
    "measure_speed",
    "model_footprint",
]
