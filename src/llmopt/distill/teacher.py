"""Teachers: the online teacher's setup, and the offline top-k cache.

Online: the teacher is frozen (`requires_grad_(False)`, eval mode, so no
dropout), runs under `no_grad`, and is cast to the training precision's
dtype: it needs no fp32 master weights because it is never updated. It is
never wrapped by DDP/FSDP (nothing to synchronise); under `--fsdp` every
process holds a full replica of the teacher, which is simple and fast for
teachers that fit on one device next to the student's shard.

Offline (`--cache-teacher DIR`): one pass of the teacher over the training
rows the run will visit (the trainer's row order depends only on the seed
and the rows per step, so they are known in advance; a corpus far larger
than the run costs nothing extra) stores for every scored position its top-k log-probs
(fp16), their token ids (int32) and the exact log of the probability mass
outside the top k (fp32), computed from the full distribution. Training then
keeps that mass as a remainder bucket (see `losses.TopK`), so nothing is
renormalised. Shards are safetensors files of whole rows; `meta.json` says
what the cache was made from, and a run whose rows, vocabulary, k or
temperature differ is refused rather than silently mis-aligned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from llmopt.data.packing import pad_right
from llmopt.distill.losses import TopK, topk_from_logits
from llmopt.errors import BadInput

CACHE_FORMAT = 1
META_FILE = "meta.json"


def freeze_teacher(
    teacher: nn.Module, device: torch.device, dtype: torch.dtype | None
) -> nn.Module:
    """Eval mode, no gradients, on `device`, in `dtype` (None keeps fp32)."""
    teacher.eval().requires_grad_(False)
    return teacher.to(device=device, dtype=dtype) if dtype is not None else teacher.to(device)


def rows_fingerprint(rows: list[torch.Tensor]) -> str:
    """A hash of the training rows (their order and every token)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(row.to(torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:32]


@dataclass
class CacheMeta:
    """What a teacher cache holds and was made from (`meta.json`)."""

    format: int
    teacher: str
    k: int
    temperature: float
    vocab_size: int
    vocab_fingerprint: str
    rows: int
    """Rows of the training source (the fingerprint covers all of them)."""
    cached_rows: int
    """Rows actually stored (those the run visits)."""
    tokens: int
    """Stored positions."""
    rows_fingerprint: str
    shards: list[dict[str, int]]
    """Per shard: number of rows and of stored positions."""
    logprob_dtype: str = "float16"
    teacher_metrics: dict | None = None
    """The teacher's measurement when the cache was made (a cached run never loads it)."""
    mass_outside_topk: float | None = None
    """Mean teacher probability outside the top k (the remainder bucket): the truncation.

    It grows fast with the temperature: for smollm2-135m on pydoc, k=64 leaves
    about 15% outside at T=1 but about 78% at T=2."""

    @property
    def bytes_per_token(self) -> float:
        """Bytes of one stored position: k ids (int32) + k log-probs (fp16) + one rest (fp32)."""
        return self.k * (4 + 2) + 4


def _rows_batches(rows: list[torch.Tensor], batch_size: int, pad_id: int):
    for a in range(0, len(rows), batch_size):
        chunk = rows[a : a + batch_size]
        ids, mask = pad_right(chunk, pad_id)
        yield chunk, ids, mask


@torch.no_grad()
def build_teacher_cache(
    teacher: nn.Module,
    rows: list[torch.Tensor],
    dest: Path,
    *,
    indices: list[int] | None = None,
    teacher_name: str,
    k: int,
    temperature: float,
    vocab_size: int,
    vocab_fingerprint: str,
    pad_id: int,
    batch_size: int = 4,
    rows_per_shard: int = 256,
    progress: bool = True,
    autocast=None,
    teacher_metrics: dict | None = None,
) -> CacheMeta:
    """Run the (frozen, placed) teacher over `rows` and write the top-k cache into `dest`.

    Position t of a row of length n (t < n - 1) stores the teacher's prediction
    of token t + 1, matching the trainer's unshifted-label convention.

    Args:
        teacher: the frozen teacher (see `freeze_teacher`), already on its device.
        rows: the training rows, in the order the trainer's source numbers them.
        dest: an empty folder (the caller stages it so a failure leaves nothing).
        indices: the rows to store (default: all); see `visited_rows`.
        k: top entries per position, 1 <= k < vocab_size.
        autocast: a context-manager factory for the training precision (None: fp32).
        teacher_metrics: the teacher's measurement, kept in `meta.json`.

    Raises:
        BadInput: k is out of range.
    """
    if not 1 <= k < vocab_size:
        raise BadInput(f"--cache-k {k}: must be in [1, {vocab_size})")
    device = next(teacher.parameters()).device
    indices = sorted(set(indices)) if indices is not None else list(range(len(rows)))
    shards: list[dict[str, int]] = []
    buffer: list[tuple[int, TopK]] = []
    done = 0
    outside = 0.0
    for a in range(0, len(indices), batch_size):
        part = indices[a : a + batch_size]
        chunk, ids, mask = next(_rows_batches([rows[i] for i in part], batch_size, pad_id))
        with autocast() if autocast is not None else contextlib.nullcontext():
            out = teacher(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        logits = out.logits[..., :vocab_size]
        for i, row in enumerate(chunk):
            top = topk_from_logits(logits[i, : row.numel() - 1], k, temperature)
            buffer.append((part[i], TopK(top.ids.cpu(), top.logprobs.cpu(), top.rest.cpu())))
            outside += float(top.rest.double().exp().sum())
        done += len(chunk)
        if len(buffer) >= rows_per_shard or done == len(indices):
            shards.append(_write_shard(dest, len(shards), buffer))
            buffer = []
        if progress:
            print(f"\r  teacher cache: {done}/{len(indices)} rows", end="", flush=True)
    if progress:
        print()
    meta = CacheMeta(
        format=CACHE_FORMAT,
        teacher=teacher_name,
        k=k,
        temperature=temperature,
        vocab_size=vocab_size,
        vocab_fingerprint=vocab_fingerprint,
        rows=len(rows),
        cached_rows=len(indices),
        tokens=sum(s["positions"] for s in shards),
        rows_fingerprint=rows_fingerprint(rows),
        shards=shards,
        teacher_metrics=teacher_metrics,
        mass_outside_topk=outside / max(1, sum(s["positions"] for s in shards)),
    )
    (dest / META_FILE).write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return meta


def _write_shard(dest: Path, number: int, entries: list[tuple[int, TopK]]) -> dict[str, int]:
    rows = [top for _, top in entries]
    lengths = torch.tensor([r.rest.numel() for r in rows], dtype=torch.int64)
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    tensors = {
        "ids": torch.cat([r.ids for r in rows]).to(torch.int32).contiguous(),
        "logprobs": torch.cat([r.logprobs for r in rows]).to(torch.float16).contiguous(),
        "rest": torch.cat([r.rest for r in rows]).to(torch.float32).contiguous(),
        "offsets": offsets,
        "row_index": torch.tensor([i for i, _ in entries], dtype=torch.int64),
    }
    save_file(tensors, str(dest / _shard_name(number)))
    return {"rows": len(rows), "positions": int(offsets[-1])}


def _shard_name(number: int) -> str:
    return f"teacher-{number:05d}.safetensors"


def read_cache_meta(folder: Path) -> CacheMeta | None:
    """The cache's metadata, or None when `folder` holds no cache.

    Raises:
        BadInput: `meta.json` is corrupt or from another cache format.
    """
    path = folder / META_FILE
    if not path.is_file():
        return None
    try:
        meta = CacheMeta(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise BadInput(f"--cache-teacher {folder}: corrupt {META_FILE} ({err})") from None
    if meta.format != CACHE_FORMAT:
        raise BadInput(f"--cache-teacher {folder}: cache format {meta.format}, need {CACHE_FORMAT}")
    return meta


class TeacherCache:
    """Reads a cache's rows by row index, memory-mapped (only the asked slices are read)."""

    def __init__(self, folder: Path, meta: CacheMeta):
        """Opens every shard lazily through safetensors' memory map.

        Raises:
            BadInput: a shard file is missing.
        """
        self.folder = folder
        self.meta = meta
        self._handles: dict[int, object] = {}
        self._offsets: dict[int, list[int]] = {}
        self._where: dict[int, tuple[int, int]] = {}  # row -> (shard, row within shard)
        for number in range(len(meta.shards)):
            if not (folder / _shard_name(number)).is_file():
                raise BadInput(f"--cache-teacher {folder}: {_shard_name(number)} is missing")
            handle, _ = self._open(number)
            for within, row in enumerate(handle.get_tensor("row_index").tolist()):
                self._where[row] = (number, within)

    def has_rows(self, indices: list[int]) -> bool:
        """True when every row of `indices` is stored."""
        return all(i in self._where for i in indices)

    def _open(self, number: int):
        if number not in self._handles:
            handle = safe_open(str(self.folder / _shard_name(number)), framework="pt")
            self._handles[number] = handle
            self._offsets[number] = handle.get_tensor("offsets").tolist()
        return self._handles[number], self._offsets[number]

    def row(self, index: int) -> TopK:
        """The stored positions of one row: [n - 1, k] ids and log-probs, [n - 1] rest."""
        number, within = self._where[index]
        handle, offsets = self._open(number)
        a, b = offsets[within], offsets[within + 1]
        return TopK(
            ids=handle.get_slice("ids")[a:b],
            logprobs=handle.get_slice("logprobs")[a:b],
            rest=handle.get_slice("rest")[a:b],
        )

    def batch(self, indices: list[int], positions: int) -> TopK:
        """Rows `indices` padded to `positions` ([B, positions, k]); padding is masked by labels.

        Padding holds a uniform (k + 1)-outcome distribution: finite values, so
        that a masked position multiplies to exactly zero in the loss.
        """
        k = self.meta.k
        fill = -math.log(k + 1)
        ids = torch.zeros((len(indices), positions, k), dtype=torch.int32)
        logprobs = torch.full((len(indices), positions, k), fill, dtype=torch.float32)
        rest = torch.full((len(indices), positions), fill, dtype=torch.float32)
        for i, index in enumerate(indices):
            top = self.row(index)
            n = min(positions, top.rest.numel())
            ids[i, :n] = top.ids[:n]
            logprobs[i, :n] = top.logprobs[:n].float()
            rest[i, :n] = top.rest[:n]
        return TopK(ids=ids, logprobs=logprobs, rest=rest)


def open_cache_for(
    folder: Path,
    rows: list[torch.Tensor],
    temperature: float,
    vocab_fingerprint: str,
    needed: list[int] | None = None,
) -> TeacherCache:
    """Open a cache and check it was made for these rows, vocabulary and temperature.

    Args:
        needed: the row indices this run will visit (default: all rows).

    Raises:
        BadInput: no cache there, it was made for other data, vocabulary or
            temperature, or it lacks rows this run visits.
    """
    meta = read_cache_meta(folder)
    if meta is None:
        raise BadInput(f"--cache-teacher {folder}: no teacher cache there ({META_FILE} missing)")
    where = f"--cache-teacher {folder}"
    if meta.vocab_fingerprint != vocab_fingerprint:
        raise BadInput(f"{where}: made with another vocabulary than the student's")
    if meta.rows != len(rows) or meta.rows_fingerprint != rows_fingerprint(rows):
        raise BadInput(
            f"{where}: made for other training rows ({meta.rows} rows; this run has "
            f"{len(rows)}): same --data, --seq-len and --pack are needed"
        )
    if not math.isclose(meta.temperature, temperature):
        raise BadInput(
            f"{where}: holds log-probs at temperature {meta.temperature}, not {temperature} "
            "(make a new cache for another temperature)"
        )
    cache = TeacherCache(folder, meta)
    if not cache.has_rows(needed if needed is not None else list(range(len(rows)))):
        raise BadInput(
            f"{where}: holds {meta.cached_rows} of the {meta.rows} rows, not all that this run "
            "visits (more steps, a larger batch or another seed than it was made for)"
        )
    return cache


def visited_rows(num_rows: int, rows_per_step: int, steps: int, seed: int) -> list[int]:
    """The row indices a run of `steps` steps visits, in the trainer's own order.

    The trainer's data source orders rows by (seed, step) only, independent of
    how a step is split into micro-batches and processes, so one step of
    `rows_per_step` rows per batch reproduces exactly its row set.
    """
    from llmopt.train.data import Layout, RowSource

    if rows_per_step >= num_rows:
        return list(range(num_rows))
    source = RowSource([torch.zeros(1, dtype=torch.int64)] * num_rows, pad_id=0, seed=seed)
    source.configure(Layout(micro_batch_size=rows_per_step, grad_accum=1))
    seen: set[int] = set()
    for _ in range(steps):
        seen.update(source.next_step()[0]["index"].tolist())
        if len(seen) == num_rows:
            break
    return sorted(seen)
