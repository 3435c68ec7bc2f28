"""Progress you can watch: a bar on a terminal, plain periodic lines in a log file, and a small status file per run.

* :class:`StepProgressBar`: Lightning's tqdm bar, with the run's step out of its total (not the epoch's batch), the
  training loss, the mIoU of the last validation and the ETA of the whole run.
* :class:`PlainProgress`: the same numbers as one line every ``every_s`` seconds (and after each validation and at
  the end) when stdout is not a terminal, so a log file gets readable lines instead of carriage returns.
* :class:`ProgressFile`: ``<default_root_dir>/progress.json`` (step, total, loss, last mIoU, elapsed, ETA), written
  by rank 0 every ``every_s`` seconds; ``reproduce.sh --status`` reads it (``polypool.sweep``).

:func:`default_progress_bar` picks the bar or the lines from ``sys.stdout.isatty()``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar, TQDMProgressBar
from typing_extensions import override

PROGRESS_FILE = "progress.json"


def format_duration(seconds: Optional[float]) -> str:
    """``H:MM:SS`` (``-`` for unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def total_steps(trainer) -> Optional[int]:
    """The run's optimiser steps in all: ``max_steps``, else Lightning's estimate from the epochs."""
    if trainer.max_steps and trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        estimate = trainer.estimated_stepping_batches
    except Exception:
        return None
    return int(estimate) if estimate is not None and math.isfinite(estimate) else None


def _scalar(value: Any) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class RunClock:
    """The numbers every view shows, measured from this attempt's first training step (ETA) and including the wall
    time of earlier attempts (elapsed, from :class:`~polypool.callbacks.RunRecord` when the trainer has one)."""

    def __init__(self) -> None:
        self.start_time: Optional[float] = None
        self.start_step: Optional[int] = None
        self.miou: Optional[float] = None
        self.miou_step: Optional[int] = None

    def begin(self, trainer) -> None:
        if self.start_time is None:
            self.start_time, self.start_step = time.time(), int(trainer.global_step)

    def after_validation(self, trainer) -> None:
        if trainer.sanity_checking:
            return
        value = _scalar(trainer.callback_metrics.get("val/mIoU"))
        if value is not None:
            self.miou, self.miou_step = value, int(trainer.global_step)

    def values(self, trainer) -> dict[str, Any]:
        step, total = int(trainer.global_step), total_steps(trainer)
        eta = None
        if self.start_time is not None and total is not None and step > (self.start_step or 0):
            rate = (time.time() - self.start_time) / (step - self.start_step)
            eta = max(total - step, 0) * rate
        elapsed = None
        for callback in trainer.callbacks:
            if type(callback).__name__ == "RunRecord" and hasattr(callback, "elapsed"):
                elapsed = callback.elapsed()
        if elapsed is None and self.start_time is not None:
            elapsed = time.time() - self.start_time
        return {
            "step": step,
            "max_steps": total,
            "loss": _scalar(trainer.progress_bar_metrics.get("train/loss")),
            "miou": self.miou,
            "miou_step": self.miou_step,
            "elapsed_s": elapsed,
            "eta_s": eta,
        }


def describe(values: dict[str, Any]) -> str:
    """``step 120/12040 (1%) | loss 0.8312 | mIoU 0.4120 (step 100) | elapsed 0:05:12 | ETA 8:12:00``."""
    step, total = values["step"], values["max_steps"]
    parts = [f"step {step}/{total} ({100 * step / total:.0f}%)" if total else f"step {step}/?"]
    parts.append(f"loss {values['loss']:.4f}" if values["loss"] is not None else "loss -")
    parts.append(
        f"mIoU {values['miou']:.4f} (step {values['miou_step']})"
        if values["miou"] is not None
        else "mIoU - (no validation yet)"
    )
    parts.append(f"elapsed {format_duration(values['elapsed_s'])}")
    parts.append(f"ETA {format_duration(values['eta_s'])}")
    return " | ".join(parts)


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar; its postfix holds the run's step/total, the loss, the last validation's mIoU and the
    ETA of the whole run (the bar itself counts the epoch's batches, as Lightning's does)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = RunClock()

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self.clock.begin(trainer)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        self.clock.after_validation(trainer)
        super().on_validation_end(trainer, pl_module)

    @override
    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        items.pop("val/mIoU", None)  # the last validation's, shown below with its step
        values = self.clock.values(trainer)
        total = values["max_steps"]
        items["step"] = f"{values['step']}/{total if total else '?'}"
        items["mIoU"] = f"{values['miou']:.4f}" if values["miou"] is not None else "-"
        items["ETA"] = format_duration(values["eta_s"])
        return items


class PlainProgress(ProgressBar):
    """One line of progress every ``every_s`` seconds of training, after each validation and at the end: for logs
    (stdout not a terminal), where a bar would write carriage returns. Rank 0 only."""

    def __init__(self, every_s: float = 30.0) -> None:
        super().__init__()
        if every_s <= 0:
            raise ValueError(f"PlainProgress needs every_s > 0, got {every_s}")
        self.every_s = every_s
        self.clock = RunClock()
        self._enabled = True
        self._last_print = 0.0

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def emit(self, trainer, prefix: str = "") -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        self._last_print = time.time()
        print(f"[progress] {prefix}{describe(self.clock.values(trainer))}", flush=True)

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.begin(trainer)
        self._last_print = time.time()
        if self._enabled and trainer.is_global_zero:
            total = total_steps(trainer)
            print(f"[progress] training from step {trainer.global_step} to {total if total else '?'}", flush=True)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.time() - self._last_print >= self.every_s:
            self.emit(trainer)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.clock.after_validation(trainer)
        self.emit(trainer, "validated: ")

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        self.emit(trainer, "training done: ")


def default_progress_bar(stream=None) -> ProgressBar:
    """:class:`StepProgressBar` on a terminal, :class:`PlainProgress` otherwise (a log file, a pipe)."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return StepProgressBar() if tty else PlainProgress()


class ProgressFile(L.Callback):
    """``<default_root_dir>/progress.json``: the run's step, total, loss, last mIoU, elapsed and ETA, with the
    process id, host and time of writing, every ``every_s`` seconds of training, after each validation and at the
    end (rank 0). ``reproduce.sh --status`` reads it; nothing else depends on it."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.clock = RunClock()
        self._last = 0.0

    def write(self, trainer, state: str = "training") -> None:
        if not trainer.is_global_zero:
            return
        self._last = time.time()
        values = {
            **self.clock.values(trainer),
            "state": state,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "updated": self._last,
        }
        path = Path(trainer.default_root_dir) / PROGRESS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(values) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.begin(trainer)
        self.write(trainer)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.time() - self._last >= self.every_s:
            self.write(trainer)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.clock.after_validation(trainer)
            self.write(trainer)

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer, "trained")


def read_progress(logdir) -> Optional[dict[str, Any]]:
    """The ``progress.json`` of a run folder, or None."""
    path = Path(logdir) / PROGRESS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
