"""SIGTERM or SIGUSR1 during a fit: ``last.ckpt`` at the step it stopped at, then a status that says so:
:class:`SignalCheckpoint`."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override


class SignalCheckpoint(L.Callback):
    """SIGTERM or SIGUSR1 during a fit: ``last.ckpt`` in ``dirpath`` at the step the run stopped at, then the fit
    ends with status 128 + the signal's number and a message (rank 0, stderr).

    Lightning's own handler (``SignalConnector``, registered for each fit) only notes SIGTERM
    (``trainer.received_sigterm``) and ends the fit after the batch with ``SIGTERMException``: status 0 and nothing
    saved. This callback saves at that batch's end (``on_train_batch_end``, where Lightning's own checkpoints are
    taken, so that ``--ckpt_path last`` continues as the uninterrupted run would) through ``trainer.save_checkpoint``
    (the CLI's atomic checkpoint IO), then ends the fit with ``SIGTERMException(143)``; under DDP the ranks decide
    together (any rank signalled: all save and stop). A signal during a validation (Lightning ends it at once) is
    saved in ``on_exception`` instead (one process only). SIGUSR1 is taken as SIGTERM, unless something handles it
    already (Lightning's SLURM auto-requeue, which saves its own ``hpc_ckpt``). A signal before the first step, or
    after the last one (during the final evaluation: Lightning's handler is gone, the default one ends the process;
    ``last.ckpt`` of the last step is there), saves nothing new."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.signal_name: Optional[str] = None  # "SIGUSR1" when that came; SIGTERM otherwise
        self.requested = False
        self._previous_usr1: Any = None
        self._start_step = 0
        self._saved_step: Optional[int] = None

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step, self._saved_step = trainer.global_step, None
        usr1 = getattr(signal, "SIGUSR1", None)
        if (
            usr1 is not None
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(usr1) in (signal.SIG_DFL, None)
        ):
            self._previous_usr1 = signal.signal(usr1, self._on_sigusr1)

    def _on_sigusr1(self, signum, frame) -> None:
        self.signal_name, self.requested = "SIGUSR1", True
        handler = signal.getsignal(signal.SIGTERM)  # Lightning's: sets trainer.received_sigterm
        if callable(handler):
            handler(signal.SIGTERM, frame)

    def _restore(self) -> None:
        if self._previous_usr1 is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._previous_usr1)
        self._previous_usr1 = None

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signal_name or "SIGTERM"))

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = bool(trainer.received_sigterm or self.requested)
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)  # any rank: every rank saves
        if stop:
            self.save(trainer)
            raise SIGTERMException(self.exit_code)

    def save(self, trainer) -> None:
        trainer.save_checkpoint(self.path)
        self._saved_step = trainer.global_step

    @override
    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        self._restore()
        step = trainer.global_step
        if (
            self._saved_step != step
            and step > self._start_step
            and trainer.world_size == 1
            and not trainer.sanity_checking
        ):
            self.save(trainer)
        name = self.signal_name or "SIGTERM"
        if self._saved_step == step:
            told = f"saved {self.path}; the same command with --ckpt_path last resumes it from there"
        elif self.path.is_file():
            told = f"nothing new to save: {self.path} is kept; the same command with --ckpt_path last resumes it"
        else:
            told = "nothing to save yet; run the same command again to start it"
        if trainer.is_global_zero:
            print(f"polypool: stopped by {name} at step {step}: {told}", file=sys.stderr, flush=True)
        exception.polypool_reported = True  # main() prints nothing more

    @override
    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore()
