"""Which teacher block's output each student block learns to reproduce.

Student block j receives the student's own output of block j-1, which stands
for the teacher's output of block `targets[j-1]`; it therefore replaces the
teacher blocks `targets[j-1] + 1 .. targets[j]` and its target is the
teacher's output of block `targets[j]`. Targets must rise strictly (the
teacher is walked forward once) and the last student block maps to the last
teacher block, so the final norm and the head see what they were trained on.

- Same depth (pruned, shared or width-slimmed students): block i -> block i.
- A student slimmed by `llmopt slim` (its llmopt.json history names the
  removed layers): each kept layer also absorbs the removed layers that
  followed it, so kept layer k_j maps to k_{j+1} - 1 (the last to the end).
- Otherwise: evenly spread segments, `(j + 1) * T // S - 1`.
- `--layer-map 'S:T,...'` overrides all of these.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from llmopt.errors import BadInput


def segment_ends(starts: list[int], teacher_layers: int) -> list[int]:
    """The target of each student block whose input stands for teacher block `starts[j]`'s.

    Student block j replaces teacher blocks starts[j] .. starts[j+1]-1 (the
    last one up to the teacher's last block).
    """
    return [nxt - 1 for nxt in [*starts[1:], teacher_layers]]


def parse_layer_map(text: str, student_layers: int, teacher_layers: int) -> list[int]:
    """Parse 'S:T,...' into the target of every student block.

    Raises:
        BadInput: malformed pairs, indices out of range, a student block missing
            or mapped twice, or targets that do not rise strictly.
    """
    targets: dict[int, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        s, sep, t = item.partition(":")
        if not sep or not s.strip().isdigit() or not t.strip().isdigit():
            raise BadInput(f"--layer-map {item!r}: expected STUDENT:TEACHER block indices")
        student, teacher = int(s), int(t)
        if student >= student_layers:
            raise BadInput(f"--layer-map {item!r}: the student has {student_layers} blocks")
        if teacher >= teacher_layers:
            raise BadInput(f"--layer-map {item!r}: the teacher has {teacher_layers} blocks")
        if student in targets:
            raise BadInput(f"--layer-map {item!r}: student block {student} is mapped twice")
        targets[student] = teacher
    missing = [s for s in range(student_layers) if s not in targets]
    if missing:
        raise BadInput(f"--layer-map {text!r}: no target for student block(s) {missing}")
    ordered = [targets[s] for s in range(student_layers)]
    if any(b <= a for a, b in pairwise(ordered)):
        raise BadInput(f"--layer-map {text!r}: teacher blocks must rise with the student's")
    return ordered


def kept_layers(record: dict[str, Any] | None) -> tuple[int, list[int]] | None:
    """(original depth, original index of every remaining layer) from slimming records.

    Reads the input's llmopt.json record and its history, oldest first; several
    slimmings compose. None when no slimming removed layers.
    """
    if not record:
        return None
    kept: list[int] | None = None
    depth = 0
    for entry in [*record.get("history", []), record]:
        facts = (entry.get("metrics") or {}).get("slim") if entry.get("stage") == "slim" else None
        if not facts:
            continue
        before = int(facts["shape_before"]["layers"])
        removed = set(facts["removed"]["layers"])
        now = [i for i in range(before) if i not in removed]
        if kept is None:
            kept, depth = now, before
        else:
            kept = [kept[i] for i in now]
    if kept is None or len(kept) == depth:
        return None
    return depth, kept


def choose_layer_map(
    text: str | None, student_layers: int, teacher_layers: int, record: dict[str, Any] | None
) -> tuple[list[int], str]:
    """The target of every student block and how it was chosen (for the record).

    Raises:
        BadInput: a bad `--layer-map`, or a student deeper than its teacher.
    """
    if text:
        return parse_layer_map(text, student_layers, teacher_layers), "given"
    if student_layers > teacher_layers:
        raise BadInput(
            f"the student has {student_layers} blocks, the teacher {teacher_layers}: "
            "a block cannot reproduce less than one teacher block (give --layer-map)"
        )
    slimmed = kept_layers(record)
    if slimmed is not None and slimmed[0] == teacher_layers and len(slimmed[1]) == student_layers:
        return segment_ends(slimmed[1], teacher_layers), "slimming record"
    if student_layers == teacher_layers:
        return list(range(student_layers)), "same depth"
    starts = [j * teacher_layers // student_layers for j in range(student_layers)]
    return segment_ends(starts, teacher_layers), "evenly spread"
