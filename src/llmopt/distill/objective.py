"""`DistillObjective`: the trainer's objective for knowledge distillation.

The trainer does everything else (accumulation, precision, DDP/FSDP, resume,
masks); this turns one micro-batch into the SUM over its label tokens of

    alpha * T^2 * D(teacher_T || student_T) + (1 - alpha) * CE + w * hidden

with labels unshifted (position t predicts labels[:, t + 1], see
`llmopt.train.objective`). The teacher's distribution comes either from an
online teacher model or from the offline top-k cache, looked up through the
batch's `index` (each row's number in the trainer's data source).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from llmopt.distill.hidden import HiddenStateLoss
from llmopt.distill.losses import LossSpec, TopK, distillation_loss
from llmopt.distill.teacher import TeacherCache, freeze_teacher
from llmopt.models.arch import ArchAdapter
from llmopt.train.objective import IGNORE_INDEX, ObjectiveOutput, model_inputs


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP (`.module`) or torch.compile (`._orig_mod`)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@contextlib.contextmanager
def capture_layers(model: nn.Module, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Record the outputs of decoder blocks `layers` during the forward passes inside."""
    found: dict[int, torch.Tensor] = {}
    blocks = ArchAdapter(unwrap(model)).blocks()
    handles = []
    for i in layers:

        def hook(_module, _args, output, i=i):
            # Blocks return a tensor in transformers 5, a tuple in older releases.
            found[i] = output[0] if isinstance(output, tuple) else output

        handles.append(blocks[i].register_forward_hook(hook))
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


class DistillObjective:
    """Knowledge distillation from an online teacher or a top-k cache (one of the two)."""

    name = "distill"

    def __init__(
        self,
        spec: LossSpec,
        vocab_size: int,
        teacher: nn.Module | None = None,
        cache: TeacherCache | None = None,
        hidden: HiddenStateLoss | None = None,
        hidden_weight: float = 1.0,
    ):
        """Takes the loss spec, the shared vocabulary size, and a teacher or a cache.

        Raises:
            ValueError: neither or both of teacher and cache, or a hidden loss with a cache
                (the cache holds no hidden states).
        """
        if (teacher is None) == (cache is None):
            raise ValueError("give exactly one of an online teacher or a teacher cache")
        if hidden is not None and cache is not None:
            raise ValueError("the hidden-state loss needs the online teacher")
        self.spec = spec
        self.vocab_size = vocab_size
        self.teacher = teacher
        self.cache = cache
        self.hidden = hidden
        self.hidden_weight = hidden_weight
        self._precision = None

    def setup(self, model: nn.Module, device: torch.device, precision) -> None:
        """Freeze the teacher on `device` in the training dtype; move projections there."""
        self._precision = precision
        if self.teacher is not None:
            freeze_teacher(self.teacher, device, getattr(precision, "dtype", None))
        if self.hidden is not None:
            self.hidden.to(device)

    def extra_parameters(self) -> list[nn.Parameter]:
        """The hidden-state projections (empty when widths match or no hidden loss)."""
        return [p for p in self.hidden.parameters()] if self.hidden is not None else []

    def _autocast(self):
        autocast = getattr(self._precision, "autocast", None)
        return autocast() if autocast is not None else contextlib.nullcontext()

    @torch.no_grad()
    def _run_teacher(self, batch: dict[str, torch.Tensor], layers: list[int]):
        with capture_layers(self.teacher, layers) as states, self._autocast():
            logits = self.teacher(**model_inputs(batch), use_cache=False).logits
        return logits[:, :-1], dict(states)

    def _cached_teacher(self, batch: dict[str, torch.Tensor]) -> TopK:
        positions = batch["input_ids"].shape[1] - 1
        top = self.cache.batch(batch["index"].tolist(), positions)
        device = batch["input_ids"].device
        return TopK(top.ids.to(device), top.logprobs.to(device), top.rest.to(device))

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        """The loss SUM over `labels[:, 1:] != -100`, with kd/ce(/hidden) sums as metrics."""
        targets = batch["labels"][:, 1:]
        student_layers = [s for s, _ in self.hidden.layer_map] if self.hidden else []
        teacher_layers = [t for _, t in self.hidden.layer_map] if self.hidden else []
        if self.teacher is not None:
            teacher, teacher_states = self._run_teacher(batch, teacher_layers)
        else:
            teacher, teacher_states = self._cached_teacher(batch), {}
        with capture_layers(model, student_layers) as student_states:
            logits = model(**model_inputs(batch), use_cache=False).logits
        sums = distillation_loss(logits[:, :-1], teacher, targets, self.spec, self.vocab_size)
        loss = sums.total
        metrics = {"kd": float(sums.kd.detach()), "ce": float(sums.ce.detach())}
        if self.hidden is not None:
            mask = targets != IGNORE_INDEX
            shifted = {i: h[:, :-1] for i, h in student_states.items()}
            teacher_shifted = {i: h[:, :-1] for i, h in teacher_states.items()}
            hidden = self.hidden(shifted, teacher_shifted, mask)
            loss = loss + self.hidden_weight * hidden
            metrics["hidden"] = float(hidden.detach())
        return ObjectiveOutput(loss_sum=loss, metrics=metrics)
