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

import sys
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from . import wandb_keys
from .callbacks import (
    DEFAULT_RECORDS_ROOT,
    AlphaHistory,
    NoSpaceError,
    QualitativePanel,
    RNGState,
    RunRecord,
    SignalCheckpoint,
    TimedLastCheckpoint,
    backbone_family,
)
from .checkpointing import (
    AtomicCheckpointIO,
    DamagedCheckpoint,
    checked_resume_path,
    checkpoint_nbytes,
    checkpoint_problem,
    has_own_checkpoint_io,
    last_checkpoints,
)
from .data import SegmentationDataModule
from .loggers import PolypoolWandbLogger, ResumableCSVLogger
from .models import SegmentationModel
from .progress import ProgressFile, default_progress_bar

# the checkpoint IO and the checkpoint callbacks lived here: their old import path (polypool.cli.X) keeps working
__all__ = [
    "AtomicCheckpointIO",
    "DamagedCheckpoint",
    "PolypoolCLI",
    "SignalCheckpoint",
    "TimedLastCheckpoint",
    "checked_resume_path",
    "checkpoint_nbytes",
    "checkpoint_problem",
    "has_own_checkpoint_io",
    "last_checkpoints",
    "main",
]


class PolypoolCLI(LightningCLI):
    @override
    def add_arguments_to_parser(self, parser) -> None:
        for key in ("num_classes", "class_names", "ignore_index"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.add_argument(
            "--wandb_project",
            type=Optional[str],
            default="polypool",
            help="W&B project of the run (offline without credentials); null: no W&B logger",
        )
        parser.add_argument(
            "--records_root",
            type=str,
            default=DEFAULT_RECORDS_ROOT,
            help="where RunRecord writes <dataset>/<experiment>/<pooling>/<seed>.json",
        )
        parser.add_argument(
            "--experiment",
            type=Optional[str],
            default=None,
            help="the name that keeps this configuration's runs apart: records in <records_root>/"
            "<dataset>/<experiment>/, W&B group <dataset>/<experiment> (reproduce.sh passes the "
            "config's name, e.g. vgg_largefov); default: the --config file's name, else the "
            "backbone family (vgg, resnet, inception)",
        )
        parser.add_argument(
            "--checkpoint_every_minutes",
            type=Optional[float],
            default=10.0,
            help="also write last.ckpt every this many minutes of training (0: after every step; "
            "null: only at validations and at the end), so an interrupted run resumed with "
            "--ckpt_path last loses at most this much work",
        )

    def _run_setting(self, key: str) -> Any:
        return self.config[self.subcommand][key] if self.subcommand else self.config[key]

    @override
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
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if "plugins" not in kwargs and not has_own_checkpoint_io(config.get("strategy"), plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]  # checkpoints complete or absent
        given = config.get("callbacks") or []
        given = list(given) if isinstance(given, list) else [given]
        extra = self.default_callbacks(root, config, given)
        if extra:
            kwargs["callbacks"] = given + extra
        return super().instantiate_trainer(**kwargs)

    def default_callbacks(self, root: Path, config: dict[str, Any], given: list) -> list:
        """The callbacks every run gets (the module's docstring says what each does), in this order, less those that
        the config's own ``trainer.callbacks`` (``given``) replaces: a callback of the class named in the table.

        LightningCLI's own ways of adding callbacks cannot say "unless the config lists its own":
        ``parser.add_lightning_class_args(RunRecord, ...)`` and ``trainer_defaults={"callbacks": ...}`` always add
        theirs (a config with its own would run two), and a default ``trainer.callbacks`` (``parser.set_defaults``)
        is replaced as a whole by a config's list (``configs/trainer/quick.yaml`` lists its own ``AlphaHistory``:
        every other default would be gone). Hence this table."""
        checkpoints = str(root / "checkpoints")
        fit = self.subcommand in (None, "fit")
        checkpointing = config.get("enable_checkpointing", True) is not False
        minutes = self._run_setting("checkpoint_every_minutes")
        if (
            checkpointing
            and not any(isinstance(c, ModelCheckpoint) for c in given)
            and minutes is not None
            and minutes < 0
        ):
            self.parser.error(f"--checkpoint_every_minutes must be >= 0 (or null: no timed checkpoints), got {minutes}")
        table = [  # (replaced by a given instance of, wanted in this run, the default)
            # no version counter: one last.ckpt, written by both instances (a counter would make last-v1.ckpt)
            (
                ModelCheckpoint,
                checkpointing,
                lambda: ModelCheckpoint(
                    dirpath=checkpoints,
                    monitor="val/mIoU",
                    mode="max",
                    filename="best-{step}",
                    save_last=True,
                    enable_version_counter=False,
                ),
            ),
            (ModelCheckpoint, checkpointing and fit, lambda: TimedLastCheckpoint(dirpath=checkpoints, minutes=minutes)),
            # every named parameter group
            (
                LearningRateMonitor,
                config.get("logger") is not False,
                lambda: LearningRateMonitor(logging_interval="step"),
            ),
            (RunRecord, True, lambda: RunRecord(root=self._run_setting("records_root"))),
            (AlphaHistory, True, AlphaHistory),
            (QualitativePanel, True, QualitativePanel),
            (RNGState, True, RNGState),  # a resumed run draws the random numbers the uninterrupted one would
            (ProgressFile, True, ProgressFile),
            (ProgressBar, config.get("enable_progress_bar", True) is not False, default_progress_bar),
            # SIGTERM/SIGUSR1: last.ckpt; after the others, so that the step it saves is complete for each of them
            (ModelCheckpoint, checkpointing and fit, lambda: SignalCheckpoint(dirpath=checkpoints)),
        ]
        return [
            make()
            for replaced_by, wanted, make in table
            if wanted and not any(isinstance(c, replaced_by) for c in given)
        ]

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
            folders = list(
                dict.fromkeys(
                    Path(c.dirpath) if c.dirpath else Path(self.trainer.default_root_dir) / "checkpoints"
                    for c in self.trainer.checkpoint_callbacks
                    if isinstance(c, ModelCheckpoint)
                )
            )
            if not any(next(folder.glob("last*.ckpt"), None) for folder in folders):  # Lightning's own pattern
                where = " or ".join(str(f) for f in folders) if folders else "any folder (checkpointing is off)"
                raise ValueError(
                    f"--ckpt_path last: there is no last.ckpt in {where} to resume from. Drop "
                    f"--ckpt_path to start this run from scratch, or give the run's own "
                    f"--trainer.default_root_dir (the folder that holds checkpoints/last.ckpt)"
                )
        for name in ("max_steps", "max_epochs"):
            if getattr(self.trainer, name) == 0:
                raise ValueError(
                    f"--trainer.{name} 0: a fit of 0 {name[4:]} trains nothing (and would write a "
                    f"record of the untrained network). Give a positive number (-1: no limit); to "
                    f"evaluate a checkpoint, use python -m polypool validate --config ... --ckpt_path "
                    f"PATH"
                )

    def before_fit(self) -> None:
        """Refuse a fit that would do nothing; fill in the record's experiment, config files, resolved config and
        seed."""
        self.refuse_a_fit_that_does_nothing()
        ckpt_path = self.config_init[self.subcommand].get("ckpt_path")
        checked = checked_resume_path(ckpt_path, self.trainer)  # a damaged checkpoint: named, and a fallback
        if checked != ckpt_path:
            self.config_init[self.subcommand]["ckpt_path"] = checked
        config = self.config[self.subcommand].as_dict()
        # Set here, on every RunRecord (the default one and one a config gives itself), rather than linked into
        # RunRecord's init args (parser.link_arguments): a link can reach a class added with add_lightning_class_args
        # but not an entry of a config's trainer.callbacks list; a parse-time link would copy seed_everything: true,
        # not the seed LightningCLI draws after parsing; and the resolved config is the whole parsed one.
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
        return PolypoolCLI(
            SegmentationModel,
            SegmentationDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except (NoSpaceError, DamagedCheckpoint) as error:
        print(f"polypool: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except SIGTERMException as error:  # a SystemExit, of status 0 when Lightning raises it
        if not getattr(error, "polypool_reported", False):
            print(
                "polypool: stopped by SIGTERM (no checkpoint written: the config has its own checkpointing)",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(error.code if isinstance(error.code, int) and error.code else 143) from None


if __name__ == "__main__":
    main()
