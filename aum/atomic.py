"""The one atomic file writer of the project: :func:`atomic_write` (and :func:`atomic_write_text`).

Every file another process (or a resumed run) may read - training checkpoints, model exports, best weights,
result records, configs, caches, sweep state - is written to a temporary name beside it, fsynced and renamed
over the target, so a crash at any moment leaves either the old file or the new one, never a torn one. A full
device is reported as :class:`DiskFullError` naming the file, with the target left as it was.
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any, Callable

__all__ = ["DiskFullError", "atomic_write", "atomic_write_text"]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class DiskFullError(OSError):
    """A file could not be written because its device is full (``errno`` ENOSPC): the message says which file
    (and, from :func:`write_train_state`, which checkpoint is the last good one). Its ``__cause__`` is the
    original error (an ``OSError``, or torch's ``RuntimeError`` from ``inline_container.cc``)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.errno = errno.ENOSPC


def _is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from or while handling) is a full device: an ``OSError`` with
    ENOSPC/EDQUOT, text saying "No space left on device", or torch's ``inline_container`` writer reporting that a
    file write failed (what ``torch.save`` to a path says when the disk fills)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text:
            return True
        if isinstance(exc, RuntimeError) and "inline_container" in text and "write failed" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Replace ``path`` atomically with what ``write(binary_file)`` writes: a temporary file next to it
    (``.NAME.tmp-PID``), fsynced, renamed over ``path``, then the folder fsynced. The temporary file never
    outlives the call. A full device raises :class:`DiskFullError` ("no space left on device writing PATH")
    and leaves ``path`` as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, DiskFullError) or not _is_disk_full(e):
            raise
        raise DiskFullError(f"no space left on device writing {path}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)



def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` atomically with ``text`` (UTF-8); see :func:`atomic_write`."""
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))
