"""Step layout: every split of a step sees the same rows; padding carries no labels."""

from __future__ import annotations

import torch

from llmopt.train.data import Layout, RowSource, collate, document_rows
from llmopt.train.objective import IGNORE_INDEX, count_label_tokens


def _rows(n: int = 24) -> list[torch.Tensor]:
    return [torch.arange(i, i + 2 + i % 5) for i in range(n)]


def _step_rows(layouts: list[Layout], steps: int) -> list[list[int]]:
    """Per step, the sorted row indices all processes of `layouts` see together."""
    sources = [RowSource(_rows(), pad_id=0, seed=7) for _ in layouts]
    for source, layout in zip(sources, layouts, strict=True):
        source.configure(layout)
    seen = []
    for _ in range(steps):
        ids = [int(i) for s in sources for b in s.next_step() for i in b["index"]]
        seen.append(sorted(ids))
    return seen


def test_same_rows_per_step_whatever_the_split():
    one = _step_rows([Layout(8, 1)], steps=6)  # 6 steps of 8 = two epochs of 24 rows
    assert one == _step_rows([Layout(2, 4)], steps=6)
    assert one == _step_rows([Layout(2, 2, rank=r, world_size=2) for r in range(2)], steps=6)
    first_epoch = [i for step in one[:3] for i in step]
    assert sorted(first_epoch) == list(range(24))  # an epoch visits every row once
    assert one[:3] != one[3:]  # and the next epoch is reshuffled


def test_collate_pads_right_and_ignores_padding():
    batch = collate([torch.tensor([5, 6, 7]), torch.tensor([8, 9])], [0, 1], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, 9, IGNORE_INDEX]]
    assert int(count_label_tokens(batch)) == 3  # 2 + 1 predicted positions


def test_long_documents_become_several_rows():
    rows = document_rows([torch.arange(10), torch.arange(1)], seq_len=4)
    assert [r.tolist() for r in rows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_resume_position():
    a = RowSource(_rows(), pad_id=0, seed=1)
    a.configure(Layout(4, 1))
    for _ in range(3):
        a.next_step()
    b = RowSource(_rows(), pad_id=0, seed=1)
    b.configure(Layout(4, 1))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_step()[0]["input_ids"], b.next_step()[0]["input_ids"])
