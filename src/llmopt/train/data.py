"""Training rows and the micro-batches of each optimizer step, per process.

A source holds a fixed list of rows (1-D token tensors). Each epoch visits them
in a seeded permutation; global step `s` takes the next
`micro_batch_size * grad_accum * world_size` rows of that permutation, and
process `r` takes its own contiguous slice of them. The order therefore
depends only on (seed, step), so a resumed run sees the same rows as a
straight one, and one process with a larger batch sees the same rows as
several processes with smaller ones.

Batches: `input_ids` and `attention_mask` [rows, longest row], `labels` (the
ids, -100 on padding; unshifted, see objective.py) and `index` (each row's
position in the source, for objectives that look up per-row data such as an
offline teacher cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmopt.data.packing import pad_right
from llmopt.errors import BadInput
from llmopt.train.objective import IGNORE_INDEX


def packed_rows(ids: torch.Tensor, seq_len: int) -> list[torch.Tensor]:
    """Cut a token stream into full rows of `seq_len` (the tail is dropped)."""
    n = ids.numel() // seq_len
    return list(ids[: n * seq_len].view(n, seq_len).unbind(0))


def document_rows(documents: list[torch.Tensor], seq_len: int) -> list[torch.Tensor]:
    """One row per document; a document longer than `seq_len` becomes several rows.

    Rows with fewer than 2 tokens are dropped: they hold no next-token label.
    """
    rows = []
    for doc in documents:
        for start in range(0, doc.numel(), seq_len):
            piece = doc[start : start + seq_len]
            if piece.numel() >= 2:
                rows.append(piece)
    return rows


def collate(rows: list[torch.Tensor], index: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad rows to the longest; labels are -100 on padding."""
    ids, mask = pad_right(rows, pad_id)
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "index": torch.tensor(index, dtype=torch.int64),
    }


@dataclass
class Layout:
    """How one step's rows are split: per micro-batch, per accumulation, per process."""

    micro_batch_size: int
    grad_accum: int
    rank: int = 0
    world_size: int = 1

    @property
    def rows_per_step(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.world_size


class RowSource:
    """A fixed list of rows served as per-process micro-batches (see module docstring)."""

    def __init__(self, rows: list[torch.Tensor], pad_id: int, seed: int = 0) -> None:
        """Takes the rows, the padding id and the shuffling seed.

        Raises:
            BadInput: there are no rows.
        """
        if not rows:
            raise BadInput("the training data has no rows (too little text for one sequence)")
        self.rows = rows
        self.pad_id = pad_id
        self.seed = seed
        self.layout = Layout(1, 1)
        self.step = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens(self) -> int:
        """Tokens over all rows."""
        return sum(r.numel() for r in self.rows)

    def configure(self, layout: Layout) -> None:
        """Set how steps are split; call before `next_step`."""
        self.layout = layout

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.rows), generator=gen))
        return self._perm[1]

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        """This process's `grad_accum` micro-batches of the next step (CPU tensors)."""
        lay = self.layout
        per_epoch = len(self.rows) // lay.rows_per_step
        epoch, within = divmod(self.step, per_epoch)
        order = self._order(epoch)
        start = within * lay.rows_per_step + lay.rank * lay.micro_batch_size * lay.grad_accum
        batches = []
        for micro in range(lay.grad_accum):
            a = start + micro * lay.micro_batch_size
            index = order[a : a + lay.micro_batch_size].tolist()
            batches.append(collate([self.rows[i] for i in index], index, self.pad_id))
        self.step += 1
        return batches

    def state_dict(self) -> dict[str, int]:
        """The data position (steps served) and what it depends on."""
        return {"step": self.step, "rows": len(self.rows), "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position.

        Raises:
            BadInput: the rows or seed differ from the checkpoint's.
        """
        if state["rows"] != len(self.rows) or state["seed"] != self.seed:
            raise BadInput(
                f"--resume: the checkpoint's data had {state['rows']} rows (seed {state['seed']}), "
                f"this run's has {len(self.rows)} (seed {self.seed}): not the same data"
            )
        self.step = int(state["step"])


def build_rows(
    data: str,
    tokenizer,
    seq_len: int,
    pack: bool,
    text_field: str = "text",
    split: str = "train",
) -> list[torch.Tensor]:
    """Rows of a corpus split: packed blocks, or documents (chunked to seq_len).

    Raises:
        BadInput: the data source cannot be read.
    """
    from llmopt.data import load_corpus

    corpus = load_corpus(data, tokenizer, split=split, text_field=text_field)
    if pack:
        return packed_rows(corpus.ids, seq_len)
    return document_rows(corpus.documents(), seq_len)


def build_source(
    data: str, tokenizer, seq_len: int, pack: bool, seed: int, text_field: str = "text"
) -> RowSource:
    """A `RowSource` over the training split of `data`.

    Raises:
        BadInput: the data cannot be read or yields no row.
    """
    rows = build_rows(data, tokenizer, seq_len, pack, text_field)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return RowSource(rows, pad_id=pad_id, seed=seed)
