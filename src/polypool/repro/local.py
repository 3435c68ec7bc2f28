"""Runs on this node: a pool of ``--workers`` processes, each pinned to its own ``--gpus-per-run`` GPUs
(``CUDA_VISIBLE_DEVICES``) or sharing the CPU's cores, a new run starting whenever one ends (:func:`run_local`).

Each run is ``python -m polypool fit`` in a session of its own, its output in its ``train.log``; it holds
``<logdir>/run.lock`` with the sweep (:func:`run_lock`), so a run left training by a sweep killed with ``kill -9`` is
not started twice. SIGTERM/SIGINT stop every run (each saves its ``last.ckpt`` and ends, or is killed after 30 s).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import spec
from .config import Sweep
from .locking import FolderLock, LockHeld
from .runs import Run
from .status import inspect_run, print_progress
from .stopping import Stopped, raise_stopped, stop_process


@dataclass
class Outcome:
    run: Run
    ok: bool
    seconds: float
    gpus: int
    returncode: Optional[int] = None
    message: str = ""


def run_env(sweep: Sweep) -> dict[str, str]:
    """The environment of every run (:func:`polypool.repro.spec.run_env`)."""
    return spec.run_env(sweep.offline)


def _copy_output(source_fd: int, sinks: list) -> None:
    while True:
        try:
            chunk = os.read(source_fd, 65536)
        except OSError:  # a pty's end (EIO)
            break
        if not chunk:
            break
        for sink in sinks:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                pass
    os.close(source_fd)


class LocalProcess:
    """One run's ``python -m polypool fit``; its output goes to ``train.log`` (appended: a resumed run keeps the
    earlier attempts'), and also to this terminal when ``echo`` (one run at a time). On a terminal the run gets a
    pseudo-terminal, so that it draws its progress bar. The run is a session of its own (a Ctrl+C reaches the sweep,
    which stops it: :meth:`stop`); ``pass_fds``: descriptors it holds too (its folder's lock)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, echo: bool, pass_fds: Sequence[int] = ()):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log, "ab")
        self.log_file.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
        self.log_file.flush()
        self.thread = None
        if echo:
            tty = sys.stdout.isatty()
            if tty:
                import fcntl
                import pty
                import struct
                import termios

                master, slave = pty.openpty()
                rows, cols = 40, 120  # a terminal that reports no size (e.g. under script(1)): the bar needs one
                try:
                    rows, cols, _, _ = struct.unpack(
                        "HHHH", fcntl.ioctl(sys.stdout.fileno(), termios.TIOCGWINSZ, b"\0" * 8)
                    )
                except OSError:
                    pass
                try:
                    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows or 40, cols or 120, 0, 0))
                except OSError:
                    pass
                self.process = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=slave,
                    stderr=slave,
                    start_new_session=True,
                    pass_fds=pass_fds,
                )
                os.close(slave)
                source = master
            else:
                self.process = subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=pass_fds,
                )
                source = os.dup(self.process.stdout.fileno())
                self.process.stdout.close()
            sys.stdout.flush()
            self.thread = threading.Thread(
                target=_copy_output, args=(source, [sys.stdout.buffer, self.log_file]), daemon=True
            )
            self.thread.start()
        else:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self.log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )

    def poll(self) -> Optional[int]:
        code = self.process.poll()
        if code is not None:
            self.close()
        return code

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None
        if not self.log_file.closed:
            self.log_file.close()

    def stop(self, timeout: float = 30.0, signalled: bool = False) -> Optional[str]:
        """SIGTERM (the run saves ``last.ckpt`` and ends; ``signalled``: already sent), SIGKILL to its process group
        after ``timeout`` s (:func:`polypool.stopping.stop_process`); returns how it ended (None: it had ended)."""
        how = stop_process(self.process, timeout, signalled=signalled)
        self.close()
        return how


def gpu_slots(sweep: Sweep) -> list[Optional[str]]:
    """One ``CUDA_VISIBLE_DEVICES`` value per worker (within the one this sweep was given), None on the CPU."""
    if not sweep.gpus_per_run:
        return [None] * sweep.workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(sweep.gpus)]
    ids = ids[: sweep.gpus]
    k = sweep.gpus_per_run
    return [",".join(ids[i * k : (i + 1) * k]) for i in range(sweep.workers)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


_Stop = Stopped  # SIGTERM/SIGINT (polypool.stopping)
_raise_stop = raise_stopped


def run_lock(run: Run) -> FolderLock:
    """The lock of ``run``'s folder (``<logdir>/run.lock``), held by the sweep and the run's process while it
    trains: a run left training by a sweep killed with ``kill -9`` keeps it, and is not started twice."""
    return FolderLock(run.logdir / "run.lock", f"the folder of the run {run.name}, {run.logdir}")


def run_local(sweep: Sweep, todo: list[tuple[Run, bool]], say=print, poll_s: float = 60.0) -> list[Outcome]:
    """Train ``todo`` (run, resume) with ``sweep.workers`` processes side by side; a new run starts whenever one
    ends. SIGTERM/SIGINT stop every run (each saves its last checkpoint and ends, or is killed after 30 s) and
    re-raise as :class:`_Stop`. Each run holds its folder's lock (:func:`run_lock`) with the sweep; a run whose
    folder another process holds (a run left training by a sweep killed with ``kill -9``) is left alone."""
    slots = gpu_slots(sweep)
    env = run_env(sweep)
    threads = None
    if sweep.workers > 1 and not sweep.gpus_per_run and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, (os.cpu_count() or 1) // sweep.workers))
    queue = deque(todo)
    active: dict[int, tuple[Run, LocalProcess, float]] = {}
    outcomes: list[Outcome] = []
    echo = sweep.workers == 1
    last_summary = time.time()
    locks: dict[Run, FolderLock] = {}
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while queue or active:
            for slot in range(len(slots)):
                if slot in active or not queue:
                    continue
                run, resume = queue.popleft()
                try:
                    locks[run] = run_lock(run).acquire(say=lambda line: say(f"== {run.name}: {line}"))
                except LockHeld as held:
                    say(f"== {run.name}: left alone, another process trains it: {held}")
                    continue
                run_env_ = dict(env)
                if slots[slot] is not None:
                    run_env_["CUDA_VISIBLE_DEVICES"] = slots[slot]
                    if sweep.gpus_per_run > 1 and sweep.workers > 1:
                        run_env_["MASTER_PORT"] = str(_free_port())  # DDP runs side by side: one port each
                if threads:
                    run_env_["OMP_NUM_THREADS"] = threads
                where = f" on GPU {slots[slot]}" if slots[slot] is not None else ""
                say(
                    f"== {run.name}{': resuming from ' + str(run.last_ckpt) if resume else ''}{where}"
                    f"{'' if echo else f' (log: {run.log})'}"
                )
                process = LocalProcess(sweep.fit_command(run, resume), run_env_, run.log, echo, pass_fds=locks[run].fds)
                locks[run].note(child=process.process.pid, child_command=f"polypool fit, {run.name}")
                run.write_state(
                    "running", pid=process.process.pid, host=socket.gethostname(), log=str(run.log), gpus=slots[slot]
                )
                active[slot] = (run, process, time.time())
            for slot, (run, process, started) in list(active.items()):
                code = process.poll()
                if code is None:
                    continue
                del active[slot]
                locks.pop(run).release()
                seconds = time.time() - started
                ok = code == 0 and run.record.is_file()
                if ok:
                    run.write_state("finished", returncode=code, log=str(run.log), seconds=seconds)
                    say(f"== {run.name}: finished in {seconds:.0f} s ({run.record})")
                else:
                    run.write_state("failed", returncode=code, log=str(run.log), seconds=seconds)
                    say(f"== {run.name}: FAILED (exit {code}); log: {run.log}")
                outcomes.append(Outcome(run, ok, seconds, sweep.gpus_per_run, code))
            if active and not echo and time.time() - last_summary >= poll_s:
                last_summary = time.time()
                say(
                    f"-- {time.strftime('%H:%M:%S')}: {len(active)} running, {len(queue)} waiting, "
                    f"{len(outcomes)} ended"
                )
                print_progress([inspect_run(run) for run, _, _ in active.values()], say)
            time.sleep(0.2)
    except _Stop:
        for _run, process, _started in active.values():  # all at once: each saves its checkpoint meanwhile
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        for run, process, started in active.values():
            how = process.stop(signalled=True)
            if how == "killed":
                say(
                    f"== {run.name}: did not end within 30 s of SIGTERM and was killed; its last checkpoint is the "
                    f"one before"
                )
            run.write_state("interrupted", log=str(run.log))
            outcomes.append(Outcome(run, False, time.time() - started, sweep.gpus_per_run, None, "interrupted"))
        raise
    finally:
        for lock in locks.values():
            lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcomes
