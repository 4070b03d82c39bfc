"""The search space: which stages, in which order, with which settings.

A candidate is a chain of calibration-only stages, always in this order:

1. a structural step (optional): `slim` (MLP width, attention, depth) or
   `share` (K unique blocks for N layers, with a plan and an initialisation);
2. `prune` (optional): Wanda or SparseGPT, unstructured (optionally with OWL's
   non-uniform sparsity) or N:M;
3. `reconstruct` (optional, after any of the above): each block learns the
   input's block output on the calibration tokens, masks and shapes kept;
4. `quantize` (optional): GPTQ to 8 or 4 bits, optionally with the embeddings.

In later rounds a recovery (distillation from the input) runs after step 3,
before the quantization (training would move weights off their grid).

Which decisions exist depends on the budget: unique parameters fall only by
slimming and sharing; non-zeros also by pruning; bytes also by quantization;
latency (on a CPU, with dense kernels) only by slimming. A shared model is not
quantized (the quantize stage refuses tensors shared by layers). Every decision is a
categorical choice for Optuna. Each candidate then has one amount that is not
chosen but solved (`llmopt.auto.sizing`): the sparsity, or how much the
structural step keeps, such that the predicted cost lands just under the
budget. With `split`, a candidate that both slims (or shares) and prunes
decides what share of the removal the structural step takes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmopt.auto.aim import MAX_SPARSITY, solve
from llmopt.auto.budget import Budget
from llmopt.auto.candidate import Candidate
from llmopt.auto.sizing import FLOAT_BYTES, SizePlan, Sizer
from llmopt.auto.structure import (
    attention_choices,
    round_to,
    share_shape,
    shared_layers,
    slim_keys,
    slim_shape,
)
from llmopt.errors import BadInput
from llmopt.share.init import INITS
from llmopt.share.plan import PLANS, make_plan
from llmopt.slim.shape import Shape

PRUNERS = ("none", "wanda", "sparsegpt")
PATTERNS = ("unstructured", "2:4", "4:8")
DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0, "auto")
"""Share of a slimming's removal taken as whole layers; 'auto': the slim stage's own
choice of widths and depth (`slim --params`, by the KL of candidate shapes)."""
SPLITS = (0.25, 0.5, 0.75)
BITS = (16, 8, 4)
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
"""--pareto: the fraction of the budget a candidate aims at."""
MARGIN = {"params": 0.0, "nonzero": 0.003, "bytes": 0.01, "latency": 0.03}
"""Aim this far below the budget: parameter counts are exact, sparsity rounds per row,
file headers vary, and latency is predicted by a fitted model."""

RECONSTRUCT_STEPS = 8
"""Optimizer steps per block of a candidate's reconstruction: a quarter of the stage's
default, as every candidate that asks for one pays it in the screening (a 64% SparseGPT
smollm2: perplexity 31.1 -> 26.9 at 32 steps, 120 s on 2 CPU cores; at 16 steps a search
at nonzero=0.5 spent 934 s, 7 of its 12 candidates reconstructing)."""

OPTIONAL = {"reconstruct": False}
"""Decisions with a default in `Space.build`."""

Pick = Callable[[str, tuple], Any]


class Space:
    """The candidates of one input model under one budget."""

    def __init__(self, budget: Budget, sizer: Sizer, hf_config, pareto: bool = False, latency=None):
        """Takes the budget, the input's `Sizer` and config, whether the search spans the
        Pareto front, and (latency budgets) the fitted `LatencyModel`."""
        self.budget = budget
        self.sizer = sizer
        self.original: Shape = sizer.original_shape
        self.pareto = pareto
        self.latency = latency
        self.step = round_to(self.original.ffn)
        self.attention = attention_choices(hf_config, self.original)
        kind = budget.kind
        self.structures: tuple[str, ...] = {
            "params": ("slim", "share"),
            "latency": ("slim",),
        }.get(kind, ("none", "slim", "share"))
        self.depths = DEPTHS if kind != "latency" else DEPTHS[:-1]

    # ----- choosing ----------------------------------------------------------------------

    def suggest(self, trial) -> Candidate | None:
        """The candidate an Optuna trial's choices describe (None: no such candidate fits)."""
        return self._compose(trial.suggest_categorical)

    def build(self, decisions: dict[str, Any]) -> Candidate | None:
        """The candidate of a dict of decisions (anchors, baselines). A decision in
        `OPTIONAL` may be missing: it takes its default (what candidates were before it).

        Raises:
            KeyError: a decision the candidate needs is missing.
            ValueError: a decision is not one of its choices.
        """

        given = {**OPTIONAL, **decisions}

        def pick(name: str, choices: tuple) -> Any:
            value = given[name]
            if value not in choices:
                raise ValueError(f"{name}={value!r}: not one of {choices}")
            return value

        return self._compose(pick)

    def anchors(self) -> list[dict[str, Any]]:
        """The single-technique candidates (uniform pruning, each slimming split alone,
        sharing, quantization alone) that every search screens first."""
        kind = self.budget.kind
        slim = [
            {"structure": "slim", "slim_depth": d, "slim_attention": "keep"} for d in (0.0, 1.0)
        ]
        share = {"structure": "share", "share_strategy": "cycle", "share_init": "stepwise"}
        out: list[dict[str, Any]] = []
        if kind in ("nonzero", "bytes"):
            for method in ("wanda", "sparsegpt"):
                out.append(
                    {"structure": "none", "prune": method, "pattern": "unstructured", "owl": False}
                )
            out += [{**s, "prune": "none"} for s in slim]
            out.append({**share, "prune": "none"})
        else:
            out += slim
            if kind == "params":
                out += [{"structure": "slim", "slim_depth": "auto"}, share]
        # Said explicitly: an enqueued trial's missing decision would be sampled.
        out = [{**a, "reconstruct": False} for a in out]
        if kind == "bytes":
            out = [{**a, "bits": 16} for a in out]
            out += [
                {"structure": "none", "prune": "none", "bits": b, "quant_embeddings": False}
                for b in (8, 4)
            ]
        if self.pareto:
            out = [{**a, "target": 1.0} for a in out]
        return [a for a in out if self.build(a) is not None]

    def floor(self) -> float:
        """The smallest cost (a fraction of the input's) any candidate of the space can have."""
        o = self.original
        smallest = Shape(
            1,
            self.step,
            o.kv_groups - ("kv_group" in self.attention),
            o.heads_per_group - ("head" in self.attention),
        )
        kind = self.budget.kind
        if kind == "latency":
            return self.latency.predict(smallest, self.sizer)
        if kind == "params":
            return self.sizer.ratio(kind, SizePlan(smallest))
        bits = 4 if kind == "bytes" else None
        plan = SizePlan(smallest, MAX_SPARSITY, bits, quant_embeddings=bits is not None)
        return self.sizer.ratio(kind, plan)

    # ----- composing one candidate -------------------------------------------------------

    def _compose(self, pick: Pick) -> Candidate | None:
        kind = self.budget.kind
        target = self.budget.fraction * (pick("target", TARGETS) if self.pareto else 1.0)
        aim = target - MARGIN[kind]
        structure = pick("structure", self.structures)
        prune = pick("prune", PRUNERS) if kind in ("nonzero", "bytes") else "none"
        pattern = pick("pattern", PATTERNS) if prune != "none" else None
        owl = pick("owl", (False, True)) if pattern == "unstructured" else False
        compressed = structure != "none" or prune != "none"
        rebuild = compressed and pick("reconstruct", (False, True))
        bits = pick("bits", BITS) if kind == "bytes" else 16
        embeddings = pick("quant_embeddings", (False, True)) if bits < 16 else False
        if structure == "share" and bits < 16:
            return None  # the quantize stage refuses models whose layers share tensors
        make = self._structure(structure, pick)
        if make == "auto":
            if prune != "none" or bits < 16:
                return None
            return self._with_reconstruction(self._slim_auto(aim), rebuild)
        split = None
        if structure != "none" and pattern == "unstructured":
            split = pick("split", SPLITS)
        fixed = 0.5 if pattern not in (None, "unstructured") else 0.0

        def plan(keep: float, sparsity: float) -> tuple[SizePlan, dict | None] | None:
            made = make(keep)
            if made is None:
                return None
            shape, keys = made
            quantized = None if bits == 16 else bits
            size = SizePlan(shape, sparsity, quantized, embeddings, structure != "share", owl)
            return size, keys

        solvable = structure != "none" or pattern == "unstructured"
        if self._redundant(aim, solvable, fixed, bits, embeddings):
            return None
        solved = solve(plan, self._cost, aim, structure != "none", pattern, split, fixed)
        if solved is None:
            return None
        size, keys, sparsity = solved
        candidate = self._candidate(keys, prune, pattern, owl, sparsity, bits, embeddings, size)
        return self._with_reconstruction(candidate, rebuild)

    @staticmethod
    def _with_reconstruction(candidate: Candidate | None, rebuild: bool) -> Candidate | None:
        """`candidate` followed by block-wise reconstruction against the input (`rebuild`):
        calibration-only, so it is screened like the stages before it."""
        if candidate is None or not rebuild:
            return candidate
        stage = {"stage": "reconstruct", "teacher": "@input", "steps": RECONSTRUCT_STEPS}
        return Candidate((*candidate.stages, stage), candidate.quantize, candidate.predicted)

    def _redundant(
        self, aim: float, solvable: bool, fixed: float, bits: int, embeddings: bool
    ) -> bool:
        """Whether a part of the candidate compresses for nothing.

        The fixed parts (an N:M pattern, quantization, quantized embeddings) cost what
        they cost; a solved amount (a structure, an unstructured sparsity) fills the gap
        to the budget. A candidate is redundant when its fixed parts alone already meet
        the budget while it has a solved amount, or when one fixed part could be left
        out and the others would still meet it.
        """
        bits_or_none = None if bits == 16 else bits

        def meets(sparsity: float, quantized: int | None, with_embeddings: bool) -> bool:
            plan = SizePlan(self.original, sparsity, quantized, with_embeddings)
            return self.budget.kind != "latency" and self._cost(plan) <= aim

        if solvable:
            return (fixed > 0 or bits_or_none is not None) and meets(
                fixed, bits_or_none, embeddings
            )
        leave_one_out = []
        if fixed > 0:
            leave_one_out.append((0.0, bits_or_none, embeddings))
        if bits_or_none is not None:
            leave_one_out.append((fixed, None, False))
        if embeddings:
            leave_one_out.append((fixed, bits_or_none, False))
        return any(meets(*parts) for parts in leave_one_out if parts != (0.0, None, False))

    def _structure(self, structure: str, pick: Pick):
        """keep -> (the shape whose storage remains, the stage keys) or None; None when the
        structural decisions cannot be made at all."""
        if structure == "none":
            return lambda keep: (self.original, None)
        if structure == "share":
            strategy = pick("share_strategy", tuple(PLANS))
            init = pick("share_init", tuple(INITS))
            return lambda keep: self._share(keep, strategy, init)
        depth = pick("slim_depth", self.depths)
        if depth == "auto":
            return "auto"
        attention = pick("slim_attention", self.attention)

        def slim(keep: float):
            shape = slim_shape(self.sizer.counter, keep, depth, attention, self.step)
            return None if shape is None else (shape, slim_keys(self.original, shape, self.step))

        return slim

    def _share(self, keep: float, strategy: str, init: str):
        k = shared_layers(self.sizer.counter, keep)
        if k is None:
            return None
        try:
            make_plan(self.original.layers, k, strategy)
        except BadInput:
            return None  # too few blocks for this plan (adjacent pairs only)
        keys = {
            "stage": "share",
            "unique_layers": k,
            "strategy": strategy,
            "init": init,
            "save_format": "shared",
        }
        return share_shape(self.original, k), keys

    def _cost(self, size: SizePlan) -> float:
        if self.budget.kind == "latency":
            return self.latency.predict(size.shape, self.sizer)
        return self.sizer.ratio(self.budget.kind, size)

    def _candidate(self, keys, prune, pattern, owl, sparsity, bits, embeddings, size):
        stages: list[dict[str, Any]] = [keys] if keys is not None else []
        if prune != "none":
            step: dict[str, Any] = {"stage": "prune", "method": prune}
            if pattern == "unstructured":
                step["sparsity"] = sparsity
                step["owl"] = owl
            else:
                step["pattern"] = pattern
            if size.bitmask:
                step["save_format"] = "sparse"
            stages.append(step)
        quantize = None
        if bits < 16:
            quantize = {"stage": "quantize", "method": "gptq", "bits": bits}
            if embeddings:
                quantize.update(embeddings=True, head=True)
        return Candidate(tuple(stages), quantize, round(self._cost(size), 6))

    def _slim_auto(self, aim: float) -> Candidate | None:
        """`slim --params KEEP`: the slim stage picks widths and depth itself, so only an
        upper bound of its cost is known: a dense model with KEEP of the parameters."""
        total, kind, original = self.sizer.counter.total, self.budget.kind, self.sizer.original
        if kind == "params":
            keep = aim * original["unique_params"] / total
        elif kind == "nonzero":
            keep = aim * original["nonzero_params"] / total
        else:
            keep = (aim * original["weight_bytes"] - self.sizer.overhead) / (FLOAT_BYTES * total)
        keep = int(keep * 10_000) / 10_000  # 4 decimals, rounded down: stays within the aim
        if not 0 < keep < 1:
            return None
        stage = {"stage": "slim", "params": keep, "round_to": self.step}
        return Candidate((stage,), None, round(aim, 6))
