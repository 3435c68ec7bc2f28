"""``last.ckpt`` on a time interval and at every validation of a fit: :class:`TimedLastCheckpoint`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import lightning as L
from typing_extensions import override


class TimedLastCheckpoint(L.Callback):
    """``last.ckpt`` in ``dirpath`` every ``minutes`` of training (``0``: after every step; ``None``: no timed saves)
    and at every validation of a fit, beside the CLI's best/last ``ModelCheckpoint``: Lightning cannot combine a time
    interval with the best-checkpoint monitor in one ``ModelCheckpoint``, and (2.6) writes ``last.ckpt`` at a
    validation only when the best improved. Saved with ``trainer.save_checkpoint`` (through the CLI's
    :class:`AtomicCheckpointIO`: complete or absent); the end of training is left to the ``ModelCheckpoint``."""

    def __init__(self, dirpath: str, minutes: Optional[float]):
        self.dirpath = Path(dirpath)
        self.interval_s = None if minutes is None else float(minutes) * 60.0
        self._saved_at = time.monotonic()

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self._saved_at = time.monotonic()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.interval_s is None:
            return
        due = time.monotonic() - self._saved_at >= self.interval_s
        if trainer.strategy.broadcast(due):  # rank 0 decides: saving is collective, every rank saves or none
            self.save(trainer)

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.save(trainer)

    def save(self, trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_at = time.monotonic()
