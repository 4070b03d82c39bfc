"""Hidden-state matching: student layer outputs pulled towards mapped teacher layers.

A student layer i is matched to a teacher layer `layer_map[i]`. When the two
widths differ, a learned linear projection (student width -> teacher width)
sits in between; it is trained with the student (the objective hands it to
the optimizer as an extra parameter) and is not part of the saved student.

Like the logit losses, the result is a SUM over label tokens: per token, the
MSE is the mean squared difference over the hidden dimension and the cosine
loss is 1 - cosine similarity; both are averaged over the mapped layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llmopt.errors import BadInput


def _mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (s - t).pow(2).mean(-1)


def _cosine(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)


HIDDEN_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": _mse,
    "cosine": _cosine,
}


def parse_layer_map(text: str, student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Parse 'S:T,S:T,...' (student layer : teacher layer, 0-based) and check the ranges.

    Raises:
        BadInput: malformed pairs, indices out of range, or a student layer mapped twice.
    """
    pairs: list[tuple[int, int]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        s, sep, t = item.partition(":")
        if not sep or not s.strip().isdigit() or not t.strip().isdigit():
            raise BadInput(f"--layer-map {item!r}: expected STUDENT:TEACHER layer indices")
        pair = (int(s), int(t))
        if pair[0] >= student_layers:
            raise BadInput(f"--layer-map {item!r}: the student has {student_layers} layers")
        if pair[1] >= teacher_layers:
            raise BadInput(f"--layer-map {item!r}: the teacher has {teacher_layers} layers")
        pairs.append(pair)
    if not pairs:
        raise BadInput(f"--layer-map {text!r}: no layer pairs")
    students = [s for s, _ in pairs]
    if len(set(students)) != len(students):
        raise BadInput(f"--layer-map {text!r}: a student layer is mapped twice")
    return pairs


def default_layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Spread the student's layers evenly over the teacher's; the last maps to the last.

    With a student of every other teacher layer this maps student i to teacher 2i + 1.
    """
    return [(i, (i + 1) * teacher_layers // student_layers - 1) for i in range(student_layers)]


class HiddenStateLoss(nn.Module):
    """Per-token hidden-state loss summed over label tokens, with optional projections."""

    def __init__(
        self,
        layer_map: list[tuple[int, int]],
        student_width: int,
        teacher_width: int,
        kind: str = "mse",
    ):
        super().__init__()
        if kind not in HIDDEN_LOSSES:
            raise BadInput(f"--hidden-loss {kind!r}: choose one of {', '.join(HIDDEN_LOSSES)}")
        self.layer_map = list(layer_map)
        self.kind = kind
        self.projections = nn.ModuleList(
            nn.Linear(student_width, teacher_width, bias=False)
            if student_width != teacher_width
            else nn.Identity()
            for _ in self.layer_map
        )

    def forward(
        self,
        student_states: dict[int, torch.Tensor],
        teacher_states: dict[int, torch.Tensor],
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Sum over masked tokens of the layer-averaged loss.

        Args:
            student_states: student layer index -> [B, L, d_s] output of that layer.
            teacher_states: teacher layer index -> [B, L, d_t].
            mask: [B, L] bool, the tokens that count.
        """
        total = mask.new_zeros((), dtype=torch.float32)
        for (s, t), proj in zip(self.layer_map, self.projections, strict=True):
            hs = student_states[s][mask].float()
            ht = teacher_states[t][mask].float()
            hs = proj(hs.to(proj.weight.dtype)).float() if isinstance(proj, nn.Linear) else hs
            total = total + HIDDEN_LOSSES[self.kind](hs, ht).sum()
        return total / len(self.layer_map)
