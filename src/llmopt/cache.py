"""The llmopt cache: converted models and tokenised data, built once.

`$LLMOPT_CACHE` (default `~/.cache/llmopt`) holds folders that are expensive
to make. `build_once` makes each one under an exclusive file lock, in a
temporary sibling that is renamed into place, so two processes never see or
leave a half-written folder: a folder that exists is complete.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llmopt.outputs import staged_output


def cache_root() -> Path:
    """The cache folder: `$LLMOPT_CACHE`, else `~/.cache/llmopt`."""
    return Path(os.environ.get("LLMOPT_CACHE") or Path.home() / ".cache" / "llmopt")


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if needed) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(dest: Path, build: Callable[[Path], None]) -> Path:
    """Return `dest`, calling `build(tmp_dir)` and renaming it there if it is missing.

    `build` writes into an empty temporary folder beside `dest`; if it raises,
    the temporary folder is removed and `dest` stays absent.
    """
    if dest.is_dir():
        return dest
    with file_lock(dest.parent / f".{dest.name}.lock"):
        if dest.is_dir():  # another process finished it while we waited
            return dest
        with staged_output(dest) as tmp:
            build(tmp)
    return dest
