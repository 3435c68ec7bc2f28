"""Locks on folders (issue 32, section 2): one sweep per output folder and config, one preparation per quick data
folder, one process per run folder.

A lock is ``fcntl.flock`` on a lock file: the kernel releases it when every process that holds the file open has
ended, however it ended (``kill -9`` included), so a lock of a dead process is never in the way and is taken over
without a race (there is no "stale" lock file to remove). A child started with the lock's descriptor
(``pass_fds=lock.fds``) holds it too: a sweep killed with ``kill -9`` while its pre-training runs leaves the lock held
until that pre-training ends, so a second sweep cannot start another one into the same folder.

The file holds who took the lock (pid, host, start time, command, and the child it started, if any), for the
messages only; it is removed when the lock is released (while still locked; a process that locked the file just
removed sees that its inode is no longer the path's and locks the new file), so a lock file that is there belongs to
a live holder or was left by a process that ended without releasing it (killed): then it is taken over, saying so.

Network file systems: flock works across hosts on NFSv4 (Linux emulates it with NFS byte-range locks, recovered
after a server restart only as far as the NFS lock manager does) but not on every cluster file system (Lustre
mounted with ``localflock``, some NFSv3 set-ups without lockd, where flock is local to each host or fails with
ENOLCK). There, two sweeps on two hosts are not kept apart by the lock: when a free lock's file names a process of
another host, the message says so; when the file system has no locks at all (ENOLCK) the work goes on without one,
with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

# how the harnesses are started (``python -m`` shows the module's file as argv[0])
PROGRAMS = {"sweep.py": "reproduce.sh", "quick.py": "python -m polypool.quick"}


def command_line() -> str:
    """This process's command, as its user typed it (reproduce.sh's, python -m polypool.quick's)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else sys.executable
    return shlex.join([PROGRAMS.get(program, program), *sys.argv[1:]])


class LockHeld(Exception):
    """Another live process holds the lock; ``holder`` is what its lock file says (may be empty)."""

    def __init__(self, lock: FolderLock, holder: dict[str, Any]):
        self.lock, self.holder = lock, holder
        super().__init__(f"{lock.what} is in use by {describe_holder(holder)} (lock file {lock.path})")


def pid_alive(pid: Any) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts as ended)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (OSError, ValueError, TypeError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def describe_holder(holder: dict[str, Any]) -> str:
    """ "pid 123 on host h (started 2026-01-02 10:11:12: reproduce.sh voc vgg ...)", and the child it started."""
    if not holder.get("pid"):
        return "another process (its lock file does not say which)"
    text = f"pid {holder['pid']} on host {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", started {holder['started']}"
    if holder.get("command"):
        text += f" ({holder['command']})"
    child = holder.get("child")
    if child and holder.get("host") == socket.gethostname() and pid_alive(child):
        what = f" ({holder['child_command']})" if holder.get("child_command") else ""
        if not pid_alive(holder["pid"]):
            text += f"; that process has ended, but the one it started holds the lock: pid {child}{what}"
        else:
            text += f", now running pid {child}{what}"
    return text


class FolderLock:
    """An exclusive lock on ``path`` (a file, made if missing, in a folder made if missing); ``what`` names what
    it guards in messages ("the sweep's output folder results/quick").

    ``acquire()`` raises :class:`LockHeld` at once; ``acquire(wait=True)`` waits until the holder ends, saying once
    who it waits for. ``taken_over`` is the previous holder's note when it had ended without releasing the lock.
    Use as a context manager, or ``release()``."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = Path(path), what
        self.fd: Optional[int] = None
        self.taken_over: Optional[dict[str, Any]] = None
        self.info: dict[str, Any] = {}
        self.unsupported: Optional[str] = None  # why this file system gives no lock (ENOLCK ...): none held

    @property
    def fds(self) -> tuple[int, ...]:
        """``pass_fds`` for a child that holds the lock with this process."""
        return (self.fd,) if self.fd is not None else ()

    def holder(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {}

    def _try(self) -> bool:
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    self.unsupported = f"{self.path.parent} has no file locks ({error.strerror})"
                    return True
                raise
            try:
                mine, now = os.fstat(fd), os.stat(self.path)
                if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                    self.fd = fd
                    return True
            except FileNotFoundError:
                pass
            os.close(fd)  # its holder removed it as we opened it (released): lock the path's file now

    def acquire(
        self, wait: bool = False, say: Callable[[str], None] = print, poll_s: float = 1.0, waiting: str = ""
    ) -> FolderLock:
        said = False
        while not self._try():
            holder = self.holder()
            if not wait:
                raise LockHeld(self, holder)
            if not said:
                say(
                    f"{waiting or 'waiting for'} {describe_holder(holder)}, which holds {self.what} "
                    f"(lock file {self.path}); this one goes on when it ends"
                )
                said = True
            time.sleep(poll_s)
        if self.unsupported:
            say(
                f"warning: {self.unsupported}: going on without a lock on {self.what}; make sure no other sweep uses it"
            )
            return self
        previous = self.holder()
        if previous.get("pid") and (previous.get("pid"), previous.get("host")) != (os.getpid(), socket.gethostname()):
            self.taken_over = previous
        self.info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": command_line(),
        }
        self._write()
        return self

    def takeover_note(self) -> Optional[str]:
        """What to say about a previous holder that ended without releasing the lock, or None."""
        previous = self.taken_over
        if not previous:
            return None
        if previous.get("host") not in (None, socket.gethostname()):
            return (
                f"{self.path} names {describe_holder(previous)}, whose lock this host does not see: it ended, "
                f"or it runs on another host of a file system that does not share locks between hosts (then "
                f"stop one of the two). Taking the lock"
            )
        return f"taking over {self.path} from {describe_holder(previous)}, which ended without releasing it"

    def note(self, **values: Any) -> None:
        """Adds ``values`` (the child it started: ``child=pid``) to the lock file's note."""
        if self.fd is None:
            return
        self.info.update(values)
        self._write()

    def _write(self) -> None:
        data = (json.dumps(self.info) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Removes the lock file (still locked) and closes it; the lock goes with the last descriptor (not LOCK_UN,
        which would release it for a child that shares the descriptor too)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> FolderLock:
        if self.fd is None and not self.unsupported:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
