"""``python -m polypool {fit,validate,test,predict} --config configs/<dataset>/<backbone>.yaml [overrides]``.

LightningCLI over :class:`SegmentationModel` and the DataModules (``data.class_path`` picks the dataset). The
DataModule's ``num_classes``, ``class_names`` and ``ignore_index`` are linked into the model.

Unless the config sets ``trainer.logger`` / checkpointing itself, every run gets, in ``trainer.default_root_dir``:

* ``CSVLogger`` **first** (so LightningCLI's ``config.yaml`` and the checkpoints go to the run's own folder; with
  W&B first they would go to a shared one and the second run would crash, Lightning issues 11256/14162), then
  :class:`PolypoolWandbLogger` (offline without credentials; ``--wandb_project null`` turns it off), grouped by
  dataset/experiment (the config's name) and tagged with the pooling, with the resolved config;
* ``ModelCheckpoint`` keeping the best val mIoU and ``last.ckpt`` in ``<default_root_dir>/checkpoints``, so
  ``--ckpt_path last`` resumes an interrupted run where it stopped: optimizer and scheduler state, the global
  random generators (:class:`RNGState`, for dropout), and the position in the epoch (the training loader is resumable, see ``polypool.data.dataset.ResumableLoader``);
* :class:`TimedLastCheckpoint`: ``last.ckpt`` also every ``--checkpoint_every_minutes`` minutes of training
  (default 10; ``null``: only at validations and at the end; ``0``: after every step), so an interrupted run loses
  at most that much work even without periodic validation (the quick preset validates only at the end, a
  full-scale run every 2,000-5,000 steps), and at every validation (Lightning 2.6's ``ModelCheckpoint`` writes
  ``last.ckpt`` there only when the best mIoU improved). Both callbacks write the same ``last.ckpt`` (no
  ``last-v1.ckpt``); a config that lists its own ``ModelCheckpoint`` gets neither;
* :class:`SignalCheckpoint`: stopped with SIGTERM (SLURM's and most schedulers' stop, ``reproduce.sh``'s) or SIGUSR1
  (a scheduler's warning before it), a fit writes ``last.ckpt`` at the step it stopped at and exits with status
  128 + the signal's number (143, 138) and a message saying how to resume (issue 32, section 1);
* :class:`RunRecord` writing ``<records_root>/<dataset>/<experiment>/<pooling>/<seed>.json`` when the fit ends,
  :class:`AlphaHistory` (P-pooling's alpha every 100 steps, ``<default_root_dir>/alpha_history.jsonl``) and
  :class:`QualitativePanel` (W&B only). A config that lists one of these callbacks itself replaces the default;
* progress (``polypool.progress``): unless ``enable_progress_bar`` is false, a tqdm bar with the run's step/total,
  loss, last val mIoU and ETA on a terminal, plain periodic lines when stdout is a file; always
  ``<default_root_dir>/progress.json``, which ``reproduce.sh --status`` reads.

Checkpoints and records are complete or absent (issue 32, section 3):

* :class:`AtomicCheckpointIO` (installed unless the config gives a ``CheckpointIO`` plugin of its own) writes each
  checkpoint to a temporary file in its folder, then renames it to its name: ``last.ckpt`` is the previous good
  one or the new one, never a part. A full disk stops the run with a message naming the folder and the space
  needed (status 1, no traceback), the previous checkpoint left in place.
* ``--ckpt_path last`` (or a path) is checked before the fit (:func:`checked_resume_path`): a damaged checkpoint is
  named, and for ``last`` the newest readable checkpoint of the same folder (the best one) is used instead, saying
  so on stderr; without one the run stops (status 1) and says to delete the damaged file to start over.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from typing_extensions import override
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .callbacks import (DEFAULT_RECORDS_ROOT, NO_SPACE_ERRNOS, AlphaHistory, NoSpaceError, QualitativePanel, RNGState, RunRecord,
                        backbone_family, format_bytes, free_bytes, temporary_name)
from . import wandb_keys
from .data import SegmentationDataModule
from .loggers import PolypoolWandbLogger, ResumableCSVLogger
from .models import SegmentationModel
from .progress import ProgressFile, default_progress_bar


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def has_own_checkpoint_io(strategy: Any, plugins: list) -> bool:
    """Whether the trainer gets a ``CheckpointIO`` of its own (a plugin, or a strategy that sets or needs its own:
    XLA, DeepSpeed, FSDP), so that :class:`AtomicCheckpointIO` is not installed."""
    if any(isinstance(p, CheckpointIO) for p in plugins) or getattr(strategy, "_checkpoint_io", None) is not None:
        return True
    name = (strategy if isinstance(strategy, str) else type(strategy).__name__).lower()
    return any(kind in name for kind in ("xla", "deepspeed", "fsdp"))


def checkpoint_nbytes(checkpoint: Any) -> int:
    """The bytes of the tensors in ``checkpoint`` (each storage once): about the size ``torch.save`` writes."""
    seen, total, stack = set(), 0, [checkpoint]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            try:
                storage = item.untyped_storage()
                key = (str(item.device), storage.data_ptr(), storage.nbytes())
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
            except (RuntimeError, NotImplementedError):
                total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose files reach their name only when complete: ``torch.save`` to a
    hidden temporary file in the checkpoint's own folder, flushed to disk, then ``os.replace`` (atomic). Lightning's
    own save writes to the system's temporary folder and moves the file, which across file systems is a copy into
    the final name: a full disk left a truncated ``last.ckpt`` there.

    A full disk (``ENOSPC``/``EDQUOT``) raises :class:`~polypool.callbacks.NoSpaceError` naming the folder and the
    space needed (the size of the checkpoint being written, or the previous one's if larger: the new file is written
    beside it); the temporary file is removed and the previous checkpoint stays as it was. Remote paths
    (``s3://`` ...) and ``storage_options`` go to ``TorchCheckpointIO``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_name(path)
            with open(tmp, "xb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except BaseException as error:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
                raise NoSpaceError(self.no_space_message(checkpoint, path)) from error
            raise

    @staticmethod
    def no_space_message(checkpoint: dict[str, Any], path: Path) -> str:
        needed = checkpoint_nbytes(checkpoint)
        previous = path.stat().st_size if path.is_file() else 0
        kept = (f"the previous {path.name} ({format_bytes(previous)}) is unchanged" if previous else
                f"no {path.name} was written")
        return (f"no space left on device to save the checkpoint {path.name} in {path.parent}: it needs about "
                f"{format_bytes(max(needed, previous))} free there ({format_bytes(free_bytes(path.parent))} free "
                f"now); {kept}, nothing half-written was left. Free some space in {path.parent} (or give the run "
                f"another --trainer.default_root_dir), then resume with --ckpt_path last")


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
        if usr1 is not None and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(usr1) in (signal.SIG_DFL, None):
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
        if self._saved_step != step and step > self._start_step and trainer.world_size == 1 \
                and not trainer.sanity_checking:
            self.save(trainer)
        name = self.signal_name or "SIGTERM"
        if self._saved_step == step:
            told = (f"saved {self.path}; the same command with --ckpt_path last resumes it from there")
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


class DamagedCheckpoint(RuntimeError):
    """``--ckpt_path`` names a checkpoint that cannot be loaded and there is nothing to fall back to; the message
    names the file and the fix. The CLI prints it and exits with status 1."""


def checkpoint_problem(path: Any) -> tuple[Optional[str], Optional[int]]:
    """``(why the checkpoint cannot be resumed from, None)``, or ``(None, its global step)`` when it loads."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        return f"cannot be read: {error.strerror}", None
    if size == 0:
        return "an empty file", None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - whatever torch.load says, the file cannot be resumed from
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "" if zipfile.is_zipfile(path) else "; no zip directory at its end: written only in part?"
        return f"{format_bytes(size)}, torch.load fails: {first}{hint}", None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint (no 'state_dict')", None
    return None, checkpoint.get("global_step")


def last_checkpoints(trainer) -> list[Path]:
    """The ``last*.ckpt`` files among which Lightning's ``ckpt_path="last"`` takes the newest."""
    found: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            found |= {str(p) for p in Path(callback.dirpath).glob("last*.ckpt")}
    return [Path(p) for p in found if _is_local(p) and Path(p).is_file()]


def checked_resume_path(ckpt_path: Optional[str], trainer, say=None) -> Optional[str]:
    """``ckpt_path`` if the checkpoint it names loads. For ``"last"`` with a damaged newest ``last*.ckpt``: the
    newest readable other checkpoint of its folder (the best one), said on stderr; with none, and for a damaged
    explicit path, raises :class:`DamagedCheckpoint` naming the file and the fix. ``best``, ``hpc``, remote paths
    and paths that do not exist are left to Lightning."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if not ckpt_path or ckpt_path in ("best", "hpc") or str(ckpt_path).startswith("registry") \
            or not _is_local(ckpt_path):
        return ckpt_path
    if ckpt_path == "last":
        candidates = last_checkpoints(trainer)
        if not candidates:
            return ckpt_path
        path = max(candidates, key=lambda p: p.stat().st_mtime)  # the one Lightning would load
    else:
        path = Path(str(ckpt_path).removeprefix("file://"))
        if not path.is_file():
            return ckpt_path
    problem, _ = checkpoint_problem(path)
    if problem is None:
        return ckpt_path
    if ckpt_path != "last":
        raise DamagedCheckpoint(f"cannot resume: the checkpoint {path} is damaged ({problem}). Pass --ckpt_path "
                                f"with another checkpoint, or leave --ckpt_path out to train from the start")
    others = sorted((p for p in path.parent.glob("*.ckpt") if p != path and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for other in others:
        other_problem, step = checkpoint_problem(other)
        if other_problem is None:
            if trainer.is_global_zero:
                say(f"polypool: the checkpoint {path} is damaged ({problem}); resuming from {other} (step {step}), "
                    f"the newest readable checkpoint in {path.parent}: the steps after it are trained again, and "
                    f"the next checkpoint replaces {path.name}")
            return str(other)
        if trainer.is_global_zero:
            say(f"polypool: {other} is damaged too ({other_problem})")
    raise DamagedCheckpoint(f"cannot resume: the checkpoint {path} is damaged ({problem}) and {path.parent} holds no "
                            f"other readable checkpoint. Delete it (rm '{path}') and run the same command again to "
                            f"train this run from the start, or pass --ckpt_path with another checkpoint")


class PolypoolCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for key in ("num_classes", "class_names", "ignore_index"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.add_argument("--wandb_project", type=Optional[str], default="polypool",
                            help="W&B project of the run (offline without credentials); null: no W&B logger")
        parser.add_argument("--records_root", type=str, default=DEFAULT_RECORDS_ROOT,
                            help="where RunRecord writes <dataset>/<experiment>/<pooling>/<seed>.json")
        parser.add_argument("--experiment", type=Optional[str], default=None,
                            help="the name that keeps this configuration's runs apart: records in <records_root>/"
                                 "<dataset>/<experiment>/, W&B group <dataset>/<experiment> (reproduce.sh passes the "
                                 "config's name, e.g. vgg_largefov); default: the --config file's name, else the "
                                 "backbone family (vgg, resnet, inception)")
        parser.add_argument("--checkpoint_every_minutes", type=Optional[float], default=10.0,
                            help="also write last.ckpt every this many minutes of training (0: after every step; "
                                 "null: only at validations and at the end), so an interrupted run resumed with "
                                 "--ckpt_path last loses at most this much work")

    def _run_setting(self, key: str) -> Any:
        return self.config[self.subcommand][key] if self.subcommand else self.config[key]

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        """LightningCLI's public hook: the run's loggers and default callbacks go in as trainer arguments."""
        config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        root = Path(config.get("default_root_dir") or "results/logs")
        kwargs.setdefault("default_root_dir", str(root))
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            # CSV first (config.yaml and checkpoints in the run's folder); it keeps earlier attempts' rows
            loggers: list = [ResumableCSVLogger(save_dir=str(root), name="", version="")]
            project = self._run_setting("wandb_project")
            if project:  # group, tags and config go to wandb.init through WandbLogger's own arguments
                loggers.append(PolypoolWandbLogger(project=project, save_dir=str(root), **self.wandb_run_info()))
            kwargs["logger"] = loggers
        given = config.get("callbacks") or []
        given = list(given) if isinstance(given, list) else [given]
        extra: list = []
        last: list = []  # SignalCheckpoint: after the others, so that the step it saves is complete for each of them
        if not any(isinstance(c, ModelCheckpoint) for c in given) and config.get("enable_checkpointing", True) is not False:
            # no version counter: one last.ckpt, written by both instances (a counter would make last-v1.ckpt)
            extra.append(ModelCheckpoint(dirpath=str(root / "checkpoints"), monitor="val/mIoU", mode="max",
                                         filename="best-{step}", save_last=True, enable_version_counter=False))
            minutes = self._run_setting("checkpoint_every_minutes")
            if minutes is not None and minutes < 0:
                self.parser.error(f"--checkpoint_every_minutes must be >= 0 (or null: no timed checkpoints), "
                                  f"got {minutes}")
            if self.subcommand in (None, "fit"):
                extra.append(TimedLastCheckpoint(dirpath=str(root / "checkpoints"), minutes=minutes))
                last.append(SignalCheckpoint(dirpath=str(root / "checkpoints")))  # SIGTERM/SIGUSR1: last.ckpt
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if "plugins" not in kwargs and not has_own_checkpoint_io(config.get("strategy"), plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]  # checkpoints complete or absent
        if config.get("logger") is not False and not any(isinstance(c, LearningRateMonitor) for c in given):
            extra.append(LearningRateMonitor(logging_interval="step"))  # every named parameter group
        if not any(isinstance(c, RunRecord) for c in given):
            extra.append(RunRecord(root=self._run_setting("records_root")))
        if not any(isinstance(c, AlphaHistory) for c in given):
            extra.append(AlphaHistory())
        if not any(isinstance(c, QualitativePanel) for c in given):
            extra.append(QualitativePanel())
        if not any(isinstance(c, RNGState) for c in given):
            extra.append(RNGState())  # a resumed run draws the random numbers the uninterrupted one would
        if not any(isinstance(c, ProgressFile) for c in given):
            extra.append(ProgressFile())
        if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in given):
            extra.append(default_progress_bar())
        extra += last
        if extra:
            kwargs["callbacks"] = given + extra
        return super().instantiate_trainer(**kwargs)

    def experiment_name(self) -> str:
        """``--experiment``, else the name of the last ``--config`` file outside configs/trainer (the presets),
        else the backbone family."""
        given = self._run_setting("experiment")
        if given:
            return given
        configs = [Path(str(getattr(c, "relative", c))) for c in (self._run_setting("config") or [])]
        configs = [c for c in configs if c.parent.name != "trainer"]
        return configs[-1].stem if configs else backbone_family(self.model.hparams.backbone)

    def config_files(self) -> list[str]:
        return [str(getattr(c, "relative", c)) for c in (self._run_setting("config") or [])]

    def wandb_run_info(self) -> dict[str, Any]:
        """The W&B run's group (dataset/experiment), tags and resolved config."""
        dataset = getattr(self.datamodule, "dataset_name", type(self.datamodule).__name__)
        experiment = self.experiment_name()
        backbone = backbone_family(self.model.hparams.backbone)
        tags = [self.model.hparams.pooling, dataset, backbone, experiment]
        from .provenance import hardware, software

        config = self.config[self.subcommand].as_dict() if self.subcommand else self.config.as_dict()
        # what produced the run, as its record holds it (the record adds world size, precision and the times)
        config[wandb_keys.PROVENANCE_CONFIG] = {"software": software(), "hardware": hardware()}
        return {"group": wandb_keys.group(dataset, experiment), "tags": tags, "config": config}

    def refuse_a_fit_that_does_nothing(self) -> None:
        """``--ckpt_path last`` with no last checkpoint (Lightning would warn and start from step 0) and a fit of 0
        steps or epochs (it would train nothing and write a record) stop before anything runs, saying why."""
        if self.config[self.subcommand].get("ckpt_path") == "last":
            folders = list(dict.fromkeys(Path(c.dirpath) if c.dirpath else Path(self.trainer.default_root_dir) /
                                         "checkpoints" for c in self.trainer.checkpoint_callbacks
                                         if isinstance(c, ModelCheckpoint)))
            if not any(next(folder.glob("last*.ckpt"), None) for folder in folders):  # Lightning's own pattern
                where = " or ".join(str(f) for f in folders) if folders else "any folder (checkpointing is off)"
                raise ValueError(f"--ckpt_path last: there is no last.ckpt in {where} to resume from. Drop "
                                 f"--ckpt_path to start this run from scratch, or give the run's own "
                                 f"--trainer.default_root_dir (the folder that holds checkpoints/last.ckpt)")
        for name in ("max_steps", "max_epochs"):
            if getattr(self.trainer, name) == 0:
                raise ValueError(f"--trainer.{name} 0: a fit of 0 {name[4:]} trains nothing (and would write a "
                                 f"record of the untrained network). Give a positive number (-1: no limit); to "
                                 f"evaluate a checkpoint, use python -m polypool validate --config ... --ckpt_path "
                                 f"PATH")

    def before_fit(self) -> None:
        """Refuse a fit that would do nothing; fill in the record's experiment, config files, resolved config and
        seed."""
        self.refuse_a_fit_that_does_nothing()
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        checked = checked_resume_path(ckpt_path, self.trainer)  # a damaged checkpoint: named, and a fallback
        if checked != ckpt_path:
            self.config_init[self.subcommand]["ckpt_path"] = checked
        config = self.config[self.subcommand].as_dict()
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunRecord):
                callback.config = {k: v for k, v in config.items() if k not in ("ckpt_path", "config")}
                callback.seed = config.get("seed_everything")
                callback.experiment = callback.experiment or self.experiment_name()
                callback.config_files = self.config_files()


def main(args: Optional[list[str]] = None) -> PolypoolCLI:
    """The CLI; a full disk, or a damaged checkpoint to resume from, ends it with a message and status 1; SIGTERM
    or SIGUSR1 with status 128 + the signal's number (:class:`SignalCheckpoint`: ``last.ckpt`` saved first).
    ``--version`` prints the package's version and the environment in one line (:func:`polypool.provenance.one_line`)."""
    if (sys.argv[1:] if args is None else list(args)) == ["--version"]:
        from .provenance import one_line

        print(one_line())
        raise SystemExit(0)
    try:
        return PolypoolCLI(SegmentationModel, SegmentationDataModule, subclass_mode_data=True,
                           auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, args=args)
    except (NoSpaceError, DamagedCheckpoint) as error:
        print(f"polypool: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except SIGTERMException as error:  # a SystemExit, of status 0 when Lightning raises it
        if not getattr(error, "polypool_reported", False):
            print("polypool: stopped by SIGTERM (no checkpoint written: the config has its own checkpointing)",
                  file=sys.stderr, flush=True)
        raise SystemExit(error.code if isinstance(error.code, int) and error.code else 143) from None


if __name__ == "__main__":
    main()
