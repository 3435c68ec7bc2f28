"""Files written complete or not at all, and a full disk said in words: :func:`atomic_write_text` (a temporary file
beside the target, flushed, then renamed over it), :class:`NoSpaceError` (what the CLI prints instead of a
traceback), and the free space of a folder."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(RuntimeError):
    """The disk (or quota) is full: a file could not be written, nothing half-written was left; the message names
    the folder and the space needed. The CLI prints it and exits with status 1 instead of a traceback."""


def format_bytes(count: Optional[float]) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file in ``path``'s folder, flushes it to disk, then renames it to ``path``
    (``os.replace``, atomic on POSIX): ``path`` is either its old content or the whole new one, never a part. On an
    error the temporary file is removed and the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = temporary_name(path)
        with open(tmp, "x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (same folder, so same file system: the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
