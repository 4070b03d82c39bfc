"""Teacher and student must speak the same vocabulary: check it, token by token.

Equal sizes are not enough (two tokenizers of the same size can number their
tokens differently), so the token -> id maps are compared. A model's head may
have more rows than the tokenizer has tokens (padded to a multiple of 64 for
speed); those rows never carry a real token and are sliced off both models'
logits, so the loss compares distributions over the real shared vocabulary.
"""

from __future__ import annotations

import hashlib
import json

from llmopt.errors import BadInput


def vocabulary(tokenizer) -> dict[str, int]:
    """The full token -> id map, added tokens included."""
    return dict(tokenizer.get_vocab())


def vocabulary_fingerprint(tokenizer) -> str:
    """A short hash of the token -> id map (stored in the offline teacher cache)."""
    blob = json.dumps(sorted(vocabulary(tokenizer).items()), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _first_difference(teacher: dict[str, int], student: dict[str, int]) -> str:
    for token, tid in sorted(teacher.items(), key=lambda kv: kv[1]):
        sid = student.get(token)
        if sid != tid:
            where = "missing" if sid is None else f"id {sid}"
            return f"token {token!r} is id {tid} in the teacher but {where} in the student"
    extra = sorted(set(student) - set(teacher), key=lambda t: student[t])
    return f"token {extra[0]!r} (id {student[extra[0]]}) is only in the student"


def shared_vocab_size(
    student_tokenizer, teacher_tokenizer, student_logits: int, teacher_logits: int
) -> int:
    """The number of real vocabulary entries both models' logits must be sliced to.

    Args:
        student_tokenizer, teacher_tokenizer: the two tokenizers.
        student_logits, teacher_logits: the width of each model's output head
            (its config's vocab_size), possibly padded beyond the tokenizer.

    Raises:
        BadInput: the vocabularies differ, or a head is narrower than the vocabulary.
    """
    teacher, student = vocabulary(teacher_tokenizer), vocabulary(student_tokenizer)
    if teacher != student:
        raise BadInput(
            f"teacher and student tokenizers differ ({len(teacher)} vs {len(student)} tokens; "
            f"{_first_difference(teacher, student)}); distillation needs one shared vocabulary"
        )
    size = max(teacher.values()) + 1
    for who, width in (("student", student_logits), ("teacher", teacher_logits)):
        if width < size:
            raise BadInput(
                f"the {who}'s output head has {width} rows but its tokenizer has {size} ids"
            )
    return size


def check_cached_vocabulary(student_tokenizer, fingerprint: str, student_logits: int) -> int:
    """Like `shared_vocab_size`, against a cache that stored the teacher's fingerprint.

    Raises:
        BadInput: the student's vocabulary is not the one the cache was made with.
    """
    mine = vocabulary_fingerprint(student_tokenizer)
    if mine != fingerprint:
        raise BadInput(
            f"the teacher cache was made with another vocabulary (fingerprint {fingerprint}, "
            f"the student's is {mine})"
        )
    size = max(vocabulary(student_tokenizer).values()) + 1
    if student_logits < size:
        raise BadInput(f"the student's output head has {student_logits} rows but {size} ids")
    return size
