"""Signals and the processes a harness starts (issue 32, section 1): every child stops with its parent.

``reproduce.sh`` (:mod:`polypool.repro.sweep`) and ``python -m polypool.quick`` (:mod:`polypool.repro.quick`) turn SIGTERM and SIGINT into
:class:`Stopped` (:func:`stop_on_signals`). Each child they start (data generation, the quick pre-training, a
download, the table, the runs) runs in a session of its own (:func:`run_child`, or ``start_new_session=True``), so
that a Ctrl+C at the terminal reaches the harness only, and the harness stops it (:func:`stop_process`): SIGTERM to
the child, which saves what it can (a ``polypool fit`` writes ``last.ckpt``: :class:`polypool.cli.SignalCheckpoint`),
up to :data:`STOP_WAIT_S` seconds to end, then SIGKILL to whatever is left of its process group (DataLoader workers,
a child that did not stop). The harness then says what was left and how to go on (:attr:`Stopped.left`), and exits
with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union

STOP_WAIT_S = 30.0  # how long a stopped child may take to save its checkpoint and end (SLURM's KillWait: 30 s)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """SIGTERM or SIGINT reached the harness. A BaseException, as KeyboardInterrupt: no ``except Exception`` on the
    way (a download's, a job's) takes it for an error. ``left``: what was left and how to go on, filled in by the
    step that was running."""

    def __init__(self, name: str, left: str = ""):
        super().__init__(name)
        self.signal, self.left = name, left

    def __str__(self) -> str:
        return self.signal

    @property
    def code(self) -> int:
        """The exit status: 128 + the signal's number (SIGINT 130, SIGTERM 143)."""
        try:
            return 128 + int(signal.Signals[self.signal])
        except KeyError:
            return 1


def raise_stopped(signum: int, frame: Any) -> None:
    raise Stopped(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = SIGNALS) -> Iterator[None]:
    """SIGTERM and SIGINT raise :class:`Stopped` while in the block (in the main thread; elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, raise_stopped) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_process(process: subprocess.Popen, wait_s: float = STOP_WAIT_S, signalled: bool = False) -> Optional[str]:
    """Stops a child started in a session of its own: SIGTERM to it (unless ``signalled``: sent already), up to
    ``wait_s`` seconds to end, then SIGKILL to its process group (what is left of it: workers, or the child itself
    if it did not end). Returns None if it had already ended, "stopped" if it ended on SIGTERM, "killed" if it had
    to be killed. Meanwhile a SIGINT (Ctrl+C again) kills it at once; another SIGTERM changes nothing (``timeout``
    and some schedulers send it twice: to the process, then to its group)."""
    if process.poll() is not None:
        _kill_group(process.pid)  # leftovers of a child that ended (its workers)
        return None
    hurry = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def kill_now(signum, frame):
            hurry.set()
            _kill_group(process.pid)

        previous = {
            signal.SIGINT: signal.signal(signal.SIGINT, kill_now),
            signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_IGN),
        }
    try:
        if not signalled:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            process.wait(wait_s)
            how = "killed" if hurry.is_set() else "stopped"
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
            how = "killed"
        _kill_group(process.pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return how


def run_child(
    command: Sequence[str],
    wait_s: float = STOP_WAIT_S,
    on_start=None,
    left: Union[str, Callable[[], str], None] = None,
    **popen: Any,
) -> int:
    """``subprocess.run(command).returncode`` for a child in a session of its own (``popen``: Popen's options,
    e.g. ``stdout``, ``pass_fds``); ``on_start(process)`` is called once it runs. Whatever interrupts the wait
    (:class:`Stopped`, KeyboardInterrupt) stops the child first (:func:`stop_process`), then goes on; a
    :class:`Stopped` says ``left`` (:attr:`Stopped.left`: what was left and how to go on; a callable is asked once
    the child has stopped)."""
    process = subprocess.Popen(list(command), start_new_session=True, **popen)
    try:
        if on_start is not None:
            on_start(process)
        return process.wait()
    except BaseException as error:
        stop_process(process, wait_s)
        if isinstance(error, Stopped) and left is not None:
            error.left = left() if callable(left) else left
        raise
