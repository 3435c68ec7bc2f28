"""Callbacks that the sweep tests (tests/test_sweep.py) pass to their runs with --trainer.callbacks+=: the runs are
processes of their own, which import this module from tests/ (PYTHONPATH)."""

import time
from pathlib import Path

import lightning as L


class PauseAt(L.Callback):
    """As step ``step`` starts, the run of ``pooling`` writes ``marker`` and sleeps ``seconds``: a test stops the
    sweep there, between two checkpoints."""

    def __init__(self, pooling: str, step: int, marker: str, seconds: float = 600.0):
        self.pooling, self.step, self.marker, self.seconds = pooling, step, Path(marker), seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.hparams.pooling == self.pooling and trainer.global_step == self.step:
            self.marker.write_text(f"{pl_module.hparams.pooling} paused at step {trainer.global_step}\n")
            time.sleep(self.seconds)


class FailFor(L.Callback):
    """The run of ``pooling`` fails as its training starts."""

    def __init__(self, pooling: str):
        self.pooling = pooling

    def on_train_start(self, trainer, pl_module):
        if pl_module.hparams.pooling == self.pooling:
            raise RuntimeError(f"simulated failure of the {self.pooling} run")
