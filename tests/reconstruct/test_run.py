"""The whole walk: every family, zeros and ties kept, a student equal to its teacher untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmopt import load_model
from llmopt.models.arch import ArchAdapter
from llmopt.reconstruct import BlockFit, reconstruct_model
from llmopt.reconstruct.run import shared_partners

from .conftest import FAMILIES, calibration, prune_half, zero_sets

FIT = BlockFit(steps=12, lr=1e-3)


def _kl_to(teacher, student, ids: torch.Tensor) -> float:
    """Mean per-token KL(teacher || student) of the next-token distributions."""
    with torch.no_grad():
        t = F.log_softmax(teacher(input_ids=ids).logits.float(), -1)
        s = F.log_softmax(student(input_ids=ids).logits.float(), -1)
    return float(F.kl_div(s, t, log_target=True, reduction="none").sum(-1).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gets_closer_to_its_teacher_and_keeps_its_zeros(family):
    teacher = load_model(family)
    student = prune_half(load_model(family))
    zeros = zero_sets(student)
    calib = calibration()
    kl_before = _kl_to(teacher, student, calib.ids)
    facts = reconstruct_model(student, teacher, calib, list(range(4)), FIT)
    rows = facts["blocks"]
    assert [r["block"] for r in rows] == [0, 1, 2, 3]
    # Each block is measured on the same inputs before and after its fit.
    for row in rows:
        assert row["loss_after"] < row["loss_before"], row
    assert _kl_to(teacher, student, calib.ids) < 0.7 * kl_before
    after = zero_sets(student)
    for name, mask in zeros.items():
        assert torch.equal(after[name], mask), name
    assert facts["optimizer_steps"] == 4 * FIT.steps
    assert facts["tokens"] == calib.ids.numel()


def test_a_student_equal_to_its_teacher_is_unchanged():
    teacher = load_model("tiny-llama")
    student = load_model("tiny-llama")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    facts = reconstruct_model(student, teacher, calibration(), list(range(4)), FIT)
    assert all(r["loss_before"] == 0.0 and r["loss_after"] == 0.0 for r in facts["blocks"])
    for name, value in student.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_shared_tensors_stay_shared_and_earlier_layers_are_replayed():
    from llmopt.share.apply import share_layers
    from llmopt.share.plan import make_plan

    teacher = load_model("tiny-llama")
    student = load_model("tiny-llama")
    share_layers(student, make_plan(4, 2, "cycle"), init="average")  # layers 0,2 and 1,3
    assert shared_partners(student) == {0: [], 1: [], 2: [0], 3: [1]}
    blocks = ArchAdapter(student).blocks()
    before = [dict(b.named_parameters()) for b in blocks]
    calib = calibration()
    kl_before = _kl_to(teacher, student, calib.ids)
    facts = reconstruct_model(student, teacher, calib, list(range(4)), FIT)
    assert [r["replayed_layers"] for r in facts["blocks"]] == [[], [], [0], [1]]
    for a, b in ((0, 2), (1, 3)):
        for name, param in blocks[a].named_parameters():
            assert param is blocks[b].get_parameter(name)  # still one tensor
            assert param is before[a][name]
    assert _kl_to(teacher, student, calib.ids) < kl_before


def test_a_shallower_student_keeps_its_shape_and_learns_the_mapped_outputs():
    from llmopt.distill.student import keep_layers

    teacher = load_model("tiny-llama")
    student = keep_layers(load_model("tiny-llama"), [0, 2])
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    calib = calibration()
    kl_before = _kl_to(teacher, student, calib.ids)
    facts = reconstruct_model(student, teacher, calib, [1, 3], FIT)
    assert [r["target"] for r in facts["blocks"]] == [1, 3]
    assert {k: v.shape for k, v in student.state_dict().items()} == shapes
    assert _kl_to(teacher, student, calib.ids) < kl_before
