"""Atomic file and directory writes: a crash or a full disk never leaves a half-written artefact. What they write
gets the permissions a plain `open` would give (the umask applies), so a shared store stays readable."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from cachepilot.errors import CachepilotError, IntegrityError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path):
    """A temporary file beside `path`, with its suffix and the permissions a plain `open` would give, for a writer
    that takes a file name; it replaces `path` when the block ends without an error, and is removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes the file private (0600)
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def locked(folder: str | Path, name: str = ".lock"):
    """An exclusive lock on `folder` (a file in it) for the block: what processes sharing the folder read, merge and
    rewrite, one at a time."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def atomic_write_npz(path: str | Path, **arrays) -> None:
    """numpy's .npz, written atomically (np.savez into memory, then `atomic_write_bytes`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def set_aside(path: str | Path) -> Path:
    """Move a damaged file out of the way, keeping it for inspection: `<name>.damaged` (or `.damaged2`, ...)."""
    path = Path(path)
    for n in range(1, 1000):
        target = path.with_name(f"{path.name}.damaged{n if n > 1 else ''}")
        if not target.exists():
            os.replace(path, target)
            return target
    raise FileExistsError(f"too many damaged copies of {path}")


def read_or_set_aside(path: str | Path, reader, log=print, also=()):
    """`reader(path)`, or None when the file is missing. A file the reader cannot read (whatever it raises: a
    truncated zip, broken JSON, a checksum that does not match) is damaged: it and the files `also` written with it
    are set aside, one line says so, and the caller computes it again."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return reader(path)
    except IntegrityError as err:  # altered, truncated or unverifiable: damaged, like a file that does not parse
        damage = err
    except CachepilotError:  # the file is whole but does not fit what is asked of it: the user's to decide
        raise
    except Exception as err:  # noqa: BLE001 - any other failure to read a stored file means it is damaged
        damage = err
    moved = [set_aside(p).name for p in (path, *map(Path, also)) if p.exists()]
    log(f"{path.name} is damaged ({type(damage).__name__}: {str(damage).splitlines()[0] if str(damage) else ''}); "
        f"set aside as {', '.join(moved)}, computing it again")
    return None


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield a temporary directory beside `path`; on success it replaces `path` in (nearly) one rename.

    The old directory is moved aside first and deleted only after the new one is in place, so at every
    moment either the old or the new complete directory exists under `path` (or its `.old` sibling).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes the folder private (0700)
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
