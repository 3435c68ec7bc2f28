"""What each run of a table is now: ``done``, ``running``, ``failed``, ``partial`` or ``missing``
(:func:`inspect_run`), with the probes that tell a live run (a pid on this host, a SLURM job, else a recent
``progress.json``).

* ``done``: its record exists (and reads: :func:`polypool.callbacks.read_record`); never run again;
* ``running``: a live process (this host: its pid; elsewhere: a SLURM job in the queue, else a ``progress.json``
  written in the last 15 minutes) is training it; left alone;
* ``failed``: its last attempt exited non-zero, or its record is damaged (truncated, not JSON, no IoU: the
  detail says ``damaged record: <path> (<why>)``); tried again (from ``last.ckpt`` if there is one), a damaged
  record first moved aside to ``<seed>.json.damaged`` (:func:`set_aside_damaged_record`);
* ``partial``: interrupted, ``checkpoints/last.ckpt`` exists; resumed with ``--ckpt_path last``;
* ``missing``: not started (or stopped before its first checkpoint); started from scratch.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .runs import STATES, Run

HEARTBEAT_S = 15 * 60  # a run on another host counts as running while its progress.json is younger than this


@dataclass
class RunStatus:
    run: Run
    state: str
    step: Optional[int] = None
    max_steps: Optional[int] = None
    miou: Optional[float] = None
    elapsed: Optional[float] = None
    detail: str = ""

    def line(self) -> str:
        from ..progress import format_duration

        step = "-" if self.step is None else str(self.step)
        total = "?" if not self.max_steps else str(self.max_steps)
        miou = "-" if self.miou is None else f"{self.miou:.4f}"
        state = self.state + (f" ({self.detail})" if self.detail else "")
        return (
            f"{self.run.pooling:<13} {self.run.seed:>4}  {state:<24} {step + '/' + total:>13}  {miou:>7}  "
            f"{format_duration(self.elapsed):>9}  {self.run.log_path()}"
        )


STATUS_HEADER = f"{'pooling':<13} {'seed':>4}  {'state':<24} {'step':>13}  {'mIoU':>7}  {'elapsed':>9}  log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    cmdline = Path(f"/proc/{int(pid)}/cmdline")
    if cmdline.parent.is_dir():  # a recycled pid: not one of ours
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        return b"polypool" in text or b"submitit" in text
    return True


def _slurm_job_alive(job_id: str) -> Optional[bool]:
    """Whether SLURM still has the job (pending or running); None when ``squeue`` is not here."""
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.returncode == 0 and bool(out.stdout.strip())


def is_alive(run: Run, state: dict[str, Any]) -> bool:
    """Whether the process (or job) that ``sweep.json`` names is still at it."""
    from ..progress import read_progress

    if state.get("host") == socket.gethostname() and state.get("pid"):
        return _pid_alive(state["pid"])
    if state.get("slurm_job"):
        alive = _slurm_job_alive(state["slurm_job"])
        if alive is not None:
            return alive
    progress = read_progress(run.logdir) or {}
    updated = progress.get("updated") or state.get("time") or 0
    return time.time() - float(updated) < HEARTBEAT_S


DONE_RECORD_KEYS = ("miou",)  # what --status shows of a record; any RunRecord has it (and per_class_iou)


def inspect_run(run: Run, max_steps: Optional[int] = None) -> RunStatus:
    """What ``run`` is now (one of :data:`STATES`), with its step, last mIoU and elapsed time. A record that is
    there but does not read (:func:`polypool.callbacks.read_record`) is not done: the run is ``failed``, with the
    detail "damaged record: <path> (<why>); it will be trained again" (unless a live process trains it)."""
    from ..callbacks import DamagedRecord, read_record
    from ..loggers import read_metrics
    from ..progress import read_progress

    progress = read_progress(run.logdir) or {}
    damaged: Optional[DamagedRecord] = None
    if run.record.is_file():
        try:
            record = read_record(run.record, required=DONE_RECORD_KEYS)
        except DamagedRecord as error:
            damaged = error
        else:
            steps = record.get("steps")
            return RunStatus(
                run,
                "done",
                steps,
                progress.get("max_steps") or max_steps or steps,
                record.get("miou"),
                record.get("wall_time_s"),
            )
    status = RunStatus(run, "missing", max_steps=max_steps)
    if progress:
        status.step, status.elapsed = progress.get("step"), progress.get("elapsed_s")
        status.max_steps = progress.get("max_steps") or max_steps
        status.miou = progress.get("miou")
    metrics = run.logdir / "metrics.csv"
    if metrics.is_file():
        try:
            history = read_metrics(metrics)
        except (OSError, ValueError, KeyError):
            history = {}
        if history:
            status.step = max(status.step or 0, *history)
            validated = [values["val/mIoU"] for values in history.values() if "val/mIoU" in values]
            if validated:
                status.miou = validated[-1]
    state = run.read_state()
    if state.get("state") in ("running", "submitted") and is_alive(run, state):
        status.state = "running"
        status.detail = f"job {state['slurm_job']}" if state.get("slurm_job") else ""
    elif state.get("state") == "failed":
        status.state = "failed"
        status.detail = f"exit {state.get('returncode')}" if state.get("returncode") is not None else ""
    elif run.last_ckpt.is_file():
        status.state = "partial"
    if damaged is not None and status.state != "running":
        status.state = "failed"
        status.detail = f"damaged record: {damaged.path} ({damaged.why}); it will be trained again"
    return status


def set_aside_damaged_record(run: Run, say=print) -> Optional[Path]:
    """Moves ``run``'s record to ``<seed>.json.damaged`` (``.damaged.1``, ... if taken) when it is there but does
    not read, so that the run is trained again and nothing is lost; returns where it went (None: no damaged
    record)."""
    from ..callbacks import DamagedRecord, read_record

    if not run.record.is_file():
        return None
    try:
        read_record(run.record, required=DONE_RECORD_KEYS)
        return None  # it reads (written since the plan was made): nothing to set aside
    except DamagedRecord as error:
        why = error.why
    target = run.record.with_name(run.record.name + ".damaged")
    number = 0
    while target.exists():
        number += 1
        target = run.record.with_name(f"{run.record.name}.damaged.{number}")
    os.replace(run.record, target)
    say(f"== {run.name}: its record {run.record} is damaged ({why}); kept as {target}, training the run again")
    return target


def runs_to_train(statuses: list[RunStatus], say=print) -> list[tuple[Run, bool]]:
    """``(run, resume from last.ckpt)`` for every run that is neither done nor running elsewhere, a damaged
    record moved aside first (:func:`set_aside_damaged_record`); says what happens to the others."""
    todo = []
    for status in statuses:
        run = status.run
        if status.state == "done":
            say(f"== {run.name}: done ({run.record})")
        elif status.state == "running":
            say(
                f"== {run.name}: running elsewhere ({status.detail or run.read_state().get('host', '?')}); "
                f"log: {run.log_path()}"
            )
        else:
            set_aside_damaged_record(run, say)
            todo.append((run, run.last_ckpt.is_file()))
    return todo


def completeness(statuses: list[RunStatus]) -> str:
    counts = {state: sum(s.state == state for s in statuses) for state in STATES}
    rest = ", ".join(f"{counts[state]} {state}" for state in STATES[1:])
    return f"{counts['done']}/{len(statuses)} runs done ({rest})"


def print_progress(statuses: list[RunStatus], say=print) -> None:
    for status in statuses:
        say(f"   {status.line()}")
