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
* :class:`RunRecord` writing ``<records_root>/<dataset>/<experiment>/<pooling>/<seed>.json`` when the fit ends,
  :class:`AlphaHistory` (P-pooling's alpha every 100 steps, ``<default_root_dir>/alpha_history.jsonl``) and
  :class:`QualitativePanel` (W&B only). A config that lists one of these callbacks itself replaces the default;
* progress (``polypool.progress``): unless ``enable_progress_bar`` is false, a tqdm bar with the run's step/total,
  loss, last val mIoU and ETA on a terminal, plain periodic lines when stdout is a file; always
  ``<default_root_dir>/progress.json``, which ``reproduce.sh --status`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.cli import LightningCLI

from .callbacks import AlphaHistory, QualitativePanel, RNGState, RunRecord, backbone_family
from .data import SegmentationDataModule
from .loggers import PolypoolWandbLogger, ResumableCSVLogger
from .models import SegmentationModel
from .progress import ProgressFile, default_progress_bar


class PolypoolCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        for key in ("num_classes", "class_names", "ignore_index"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")
        parser.add_argument("--wandb_project", type=Optional[str], default="polypool",
                            help="W&B project of the run (offline without credentials); null: no W&B logger")
        parser.add_argument("--records_root", type=str, default="results/runs",
                            help="where RunRecord writes <dataset>/<experiment>/<pooling>/<seed>.json")
        parser.add_argument("--experiment", type=Optional[str], default=None,
                            help="the name that keeps this configuration's runs apart: records in <records_root>/"
                                 "<dataset>/<experiment>/, W&B group <dataset>/<experiment> (reproduce.sh passes the "
                                 "config's name, e.g. vgg_largefov); default: the --config file's name, else the "
                                 "backbone family (vgg, resnet, inception)")

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
        if not any(isinstance(c, ModelCheckpoint) for c in given) and config.get("enable_checkpointing", True) is not False:
            extra.append(ModelCheckpoint(dirpath=str(root / "checkpoints"), monitor="val/mIoU", mode="max",
                                         filename="best-{step}", save_last=True))
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
        return {"group": f"{dataset}/{experiment}", "tags": tags,
                "config": self.config[self.subcommand].as_dict() if self.subcommand else self.config.as_dict()}

    def before_fit(self) -> None:
        """Fill in the record's experiment, config files, resolved config and seed."""
        config = self.config[self.subcommand].as_dict()
        for callback in self.trainer.callbacks:
            if isinstance(callback, RunRecord):
                callback.config = {k: v for k, v in config.items() if k not in ("ckpt_path", "config")}
                callback.seed = config.get("seed_everything")
                callback.experiment = callback.experiment or self.experiment_name()
                callback.config_files = self.config_files()


def main(args: Optional[list[str]] = None) -> PolypoolCLI:
    return PolypoolCLI(SegmentationModel, SegmentationDataModule, subclass_mode_data=True,
                       auto_configure_optimizers=False, save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
