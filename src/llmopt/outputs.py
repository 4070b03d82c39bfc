"""Write stage outputs so that a failure never leaves a folder that looks complete.

A stage writes into a temporary sibling of its output folder and renames it
into place only at the end. An existing output is replaced only with
`overwrite`, only after the new one is complete, and only when llmopt wrote
it (its llmopt.json lists every file in it) and it holds neither the input
nor anything else. One run at a time owns an output: a lock beside it refuses
a second one at once, and the temporary folders that dead runs left beside it
are removed by the next run that holds the lock.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from llmopt.errors import BadInput

RECORD_FILE = "llmopt.json"


def current_umask() -> int:
    """The process's umask (read without changing it for longer than a call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the user's usual mode."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def write_file_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Write one file so that readers see the old file or the whole new one, never a part.

    `write(tmp)` writes a temporary sibling, which is then renamed over `path`
    (and given the user's usual mode). If `write` raises, nothing is left.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """`write_file_atomic` for text (UTF-8)."""
    return write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _written_by_llmopt(dest: Path) -> str | None:
    """None when `dest` is a complete llmopt output holding only its own files, else why not."""
    import json

    record = dest / RECORD_FILE
    if not record.is_file():
        return f"it has no {RECORD_FILE} (llmopt did not write it)"
    try:
        files = json.loads(record.read_text(encoding="utf-8")).get("files")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return f"its {RECORD_FILE} is corrupt"
    if not isinstance(files, list):
        return f"its {RECORD_FILE} does not list the files llmopt wrote"
    extra = sorted(
        str(p.relative_to(dest))
        for p in dest.rglob("*")
        if p.is_file() and str(p.relative_to(dest)) not in {*files, RECORD_FILE}
    )
    return f"it holds files llmopt did not write ({', '.join(extra[:3])})" if extra else None


def check_output(dest: str | Path, overwrite: bool = False, protect: tuple[Path, ...] = ()) -> Path:
    """Validate an output folder before any work is done; returns its absolute path.

    Args:
        dest: the output folder.
        overwrite: replace an existing output (once the new one is complete).
        protect: folders that must survive (the input model): the output may be
            neither one of them, inside one, nor contain one.

    Raises:
        BadInput: it is a file; it exists and is not empty (without overwrite) or
            is not an llmopt output holding only its own files (with overwrite);
            it is or contains a protected folder; its parent cannot be created or
            written.
    """
    dest = Path(dest).expanduser().resolve()
    for folder in protect:
        folder = folder.expanduser().resolve()
        if _inside(dest, folder) or _inside(folder, dest):
            raise BadInput(f"--output {dest}: would overwrite the input model {folder}")
    if dest.exists() and not dest.is_dir():
        raise BadInput(f"--output {dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        if not overwrite:
            raise BadInput(
                f"--output {dest}: exists and is not empty (pass --overwrite to replace it)"
            )
        why = _written_by_llmopt(dest)
        if why is not None:
            raise BadInput(f"--output {dest}: not replaced: {why}")
    check_parent(dest, "--output")
    return dest


def check_parent(path: Path, flag: str) -> None:
    """Create the folder `path` goes into, and make sure this process can write there.

    Raises:
        BadInput: it cannot be created or written (the message names `flag`).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"{flag} {path}: cannot create its folder ({err.strerror})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {path}: its folder {path.parent} is not writable")


def lock_path(dest: Path) -> Path:
    """The hidden lock file beside `dest` that `output_lock` holds."""
    return dest.parent / f".{dest.name}.lock"


def check_unlocked(dest: Path, flag: str = "--output") -> None:
    """Refuse at once, before any work, a folder that another live run holds.

    Takes nothing: a free folder stays free (the lock file is neither made nor removed).

    Raises:
        BadInput: another process holds the lock of `dest`.
    """
    try:
        handle = open(lock_path(dest), "rb")  # noqa: SIM115 (closed below)
    except OSError:  # no lock file: nobody holds it
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BadInput(f"{flag} {dest}: another llmopt run is writing it") from None
    finally:
        handle.close()


@contextmanager
def output_lock(dest: Path, flag: str = "--output") -> Iterator[None]:
    """Own `dest` for the block: a second run into it is refused at once.

    The lock is a hidden file beside `dest`, removed again on release. While it
    is held, temporary and old folders that earlier (dead) runs left beside
    `dest` are removed.

    Args:
        dest: the folder to own.
        flag: how the refusal names it (--output, --run-dir).

    Raises:
        BadInput: another process holds the lock.
    """
    lock = lock_path(dest)
    handle = _acquire(lock, dest, flag)
    try:
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in dest.parent.glob(f".{dest.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        lock.unlink(missing_ok=True)  # before closing: a waiter then sees a new file
        handle.close()


def _acquire(lock: Path, dest: Path, flag: str):
    """An open, exclusively locked handle on `lock` that is still the file at that path."""
    while True:
        handle = open(lock, "a")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise BadInput(f"{flag} {dest}: another llmopt run is writing it") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the holder removed it between our open and our lock: retry
            return handle
        handle.close()


@contextmanager
def staged_output(dest: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder that becomes `dest` when the block succeeds.

    The caller checks `dest` first (`check_output`); an existing `dest` is
    swapped out only after the block succeeded.
    """
    dest = Path(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    follow_umask(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Some writers (mkstemp, safetensors) create 0600 files; outputs follow the umask.
    for path in tmp.rglob("*"):
        follow_umask(path)
    if dest.exists():
        # A fresh empty name (rename replaces an empty folder): a stale .old-* that a
        # dead run left, even one with this pid, can never make the swap fail.
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)


def list_files(folder: Path) -> list[str]:
    """Every file under `folder`, relative, sorted (what a record says llmopt wrote)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
