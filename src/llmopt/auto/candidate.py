"""A candidate: the compression stages of one recipe, before any recovery.

Its id is a hash of those stages, so the same recipe is the same candidate
(and the same run folder) however the sampler arrived at it, in this process
or in a resumed one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Candidate:
    """The stages of one candidate (recipe keys, `stage:` first) and its predicted cost.

    Attributes:
        stages: the calibration-only stages that run before the recovery, in order.
        quantize: the quantization stage, which runs after the recovery (None: none).
        predicted: the predicted cost as a fraction of the input's (for aiming only).
    """

    stages: tuple[dict[str, Any], ...]
    quantize: dict[str, Any] | None
    predicted: float

    @property
    def id(self) -> str:
        """A short hash of the stages: equal recipes, equal ids."""
        text = json.dumps([list(self.stages), self.quantize], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    @property
    def pruned(self) -> bool:
        """Whether a stage sets weights to zero (the recovery then keeps them at zero)."""
        return any(s["stage"] == "prune" for s in self.stages)

    @property
    def label(self) -> str:
        """The recipe in a few words, e.g. 'slim layers-4 ffn-0.25 + wanda 0.55 owl'."""
        parts = [_describe(s) for s in self.stages]
        if self.quantize is not None:
            parts.append(_describe(self.quantize))
        return " + ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (what the search stores), with its id and label for readers."""
        return {
            "id": self.id,
            "label": self.label,
            "stages": list(self.stages),
            "quantize": self.quantize,
            "predicted": self.predicted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        """The candidate `to_dict` described."""
        return cls(tuple(data["stages"]), data["quantize"], float(data["predicted"]))


def _describe(stage: dict[str, Any]) -> str:
    kind = stage["stage"]
    if kind == "slim":
        if "params" in stage:
            return f"slim auto {stage['params']:g}"
        cuts = [
            f"{label}-{stage[key]:g}"
            for key, label in (
                ("layers", "layers"),
                ("ffn", "ffn"),
                ("kv_groups", "kv"),
                ("heads", "heads"),
            )
            if key in stage
        ]
        return "slim " + " ".join(cuts)
    if kind == "share":
        return f"share K={stage['unique_layers']} {stage['strategy']}/{stage['init']}"
    if kind == "prune":
        amount = stage.get("pattern") or f"{stage['sparsity']:g}"
        return f"{stage['method']} {amount}" + (" owl" if stage.get("owl") else "")
    if kind == "quantize":
        return f"gptq {stage['bits']}-bit" + (" +emb" if stage.get("embeddings") else "")
    return kind
