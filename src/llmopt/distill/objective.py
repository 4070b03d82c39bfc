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
import torch.nn.functional as F
from torch import nn

from llmopt.distill.hidden import HiddenStateLoss
from llmopt.distill.losses import (
    LossSpec,
    LossSums,
    TopK,
    distillation_loss,
    flatten_teacher,
    fused_distillation_loss,
)
from llmopt.distill.teacher import TeacherCache, freeze_teacher
from llmopt.models.arch import ArchAdapter
from llmopt.train.head_loss import capture_head_input, find_head, unwrap
from llmopt.train.objective import IGNORE_INDEX, ObjectiveOutput, model_inputs

__all__ = ["DistillObjective", "capture_layers", "unwrap"]


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
        fused: bool = True,
    ):
        """Takes the loss spec, the shared vocabulary size, and a teacher or a cache.

        `fused` computes the student's head inside the loss, chunk by chunk
        (`fused_distillation_loss`); False keeps the logits path it is tested against.

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
        self.fused = fused
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

    def _run_teacher(self, batch: dict[str, torch.Tensor], layers: list[int]):
        # inference_mode, not no_grad: no version counters or views to track for
        # tensors that never meet autograd.
        with (
            torch.inference_mode(),
            capture_layers(self.teacher, layers) as states,
            self._autocast(),
        ):
            logits = self.teacher(**model_inputs(batch), use_cache=False).logits
        return logits, dict(states)

    def _cached_teacher(self, batch: dict[str, torch.Tensor]) -> TopK:
        positions = batch["input_ids"].shape[1] - 1
        top = self.cache.batch(batch["index"].tolist(), positions)
        device = batch["input_ids"].device
        return TopK(top.ids.to(device), top.logprobs.to(device), top.rest.to(device))

    def _student_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], teacher, layers: list[int]
    ) -> tuple[LossSums, dict[int, torch.Tensor]]:
        labels = batch["labels"]
        head = find_head(model) if self.fused else None
        with capture_layers(model, layers) as states:
            if head is None:
                logits = model(**model_inputs(batch), use_cache=False).logits
                if isinstance(teacher, torch.Tensor):
                    teacher = teacher[:, :-1]
                sums = distillation_loss(
                    logits[:, :-1], teacher, labels[:, 1:], self.spec, self.vocab_size
                )
                return sums, dict(states)
            with capture_head_input(head) as found:
                model(**model_inputs(batch), use_cache=False)
        rows, positions = labels.shape
        # Row t predicts labels[:, t + 1]; the last position of each row predicts nothing.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)
        hidden = found.hidden.reshape(rows * positions, -1)
        sums = fused_distillation_loss(
            hidden,
            found.head,
            flatten_teacher(teacher, rows, positions),
            targets,
            self.spec,
            self.vocab_size,
        )
        return sums, dict(states)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        """The loss SUM over `labels[:, 1:] != -100`, with kd/ce(/hidden) sums as metrics.

        Metrics stay tensors: reading them here would wait for the device every step.
        """
        targets = batch["labels"][:, 1:]
        student_layers = [s for s, _ in self.hidden.layer_map] if self.hidden else []
        teacher_layers = [t for _, t in self.hidden.layer_map] if self.hidden else []
        if self.teacher is not None:
            teacher, teacher_states = self._run_teacher(batch, teacher_layers)
        else:
            teacher, teacher_states = self._cached_teacher(batch), {}
        sums, student_states = self._student_loss(model, batch, teacher, student_layers)
        loss = sums.total
        metrics = {"kd": sums.kd.detach(), "ce": sums.ce.detach()}
        if self.hidden is not None:
            mask = targets != IGNORE_INDEX
            shifted = {i: h[:, :-1] for i, h in student_states.items()}
            teacher_shifted = {i: h[:, :-1] for i, h in teacher_states.items()}
            hidden = self.hidden(shifted, teacher_shifted, mask)
            loss = loss + self.hidden_weight * hidden
            metrics["hidden"] = hidden.detach()
        return ObjectiveOutput(loss_sum=loss, metrics=metrics)
