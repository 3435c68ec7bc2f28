"""The run record: one machine-readable JSON file per finished run, at :func:`record_file`'s path, written by
:class:`RunRecord` when a fit ends."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from typing_extensions import override

from .. import provenance
from .alpha import alpha_summary, log_dense_alpha_histograms
from .evaluation import final_evaluation
from .files import NO_SPACE_ERRNOS, NoSpaceError, atomic_write_text, format_bytes, free_bytes


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


DEFAULT_RECORDS_ROOT = "results/runs"


def record_file(root, dataset: str, experiment: str, pooling: str, seed: int) -> Path:
    """Where a run's record lives: ``<root>/<dataset>/<experiment>/<pooling>/<seed>.json``. The one owner of that
    layout: the reproduction harness, the tables and the notebooks find records with it.

    >>> record_file(DEFAULT_RECORDS_ROOT, "voc", "vgg_largefov", "ppool", 0).as_posix()
    'results/runs/voc/vgg_largefov/ppool/0.json'
    """
    return Path(root) / dataset / experiment / pooling / f"{seed}.json"


def config_hash(config: Optional[dict]) -> str:
    if not config:
        return "none"
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class RunRecord(L.Callback):
    """Writes ``<root>/<dataset>/<experiment>/<pooling>/<seed>.json`` when a fit ends: per-class IoU (NaN for absent
    classes, written as null), mIoU, class names, the experiment and its config files, the config hash, the git
    commit, steps, wall time, for every P-pooling layer alpha's mean and spread at the first and the last step, and
    its provenance (:mod:`polypool.provenance`: the software and hardware, the start and end time, GPU- or CPU-hours).

    ``dataset`` defaults to the DataModule's ``dataset_name``; ``experiment`` (the CLI sets it to the config's name,
    e.g. ``vgg_largefov``) to the model's backbone family (vgg16 -> "vgg", resnet* -> "resnet", inception* ->
    "inception"). The alpha statistics are taken over a fixed probe image (the first training image) for a dense
    alpha; the probe, the first statistics and the elapsed time are checkpointed, so a resumed run records the
    whole run.

    With a W&B logger it also sends, at every periodic validation, the distribution of each dense P-pooling layer's
    alpha over the probe (``alpha/<layer>/dense_hist``; :func:`log_dense_alpha_histograms`); the final evaluation
    sends it too (:func:`final_evaluation`).
    """

    def __init__(
        self, root: str = DEFAULT_RECORDS_ROOT, dataset: Optional[str] = None, experiment: Optional[str] = None
    ):
        self.root, self.dataset, self.experiment = Path(root), dataset, experiment
        self.config: Optional[dict] = None
        self.config_files: list[str] = []
        self.seed: Optional[int] = None
        self._start: Optional[float] = None
        self._elapsed_before = 0.0  # wall time of earlier attempts of this run (from the checkpoint)
        self._probe: Optional[torch.Tensor] = None
        self._alpha_first: Optional[dict] = None
        self._started: Optional[str] = None  # when the run's first attempt started (UTC, ISO 8601)

    @override
    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.time()
        if self._started is None:
            self._started = provenance.now()

    @property
    def probe(self) -> Optional[torch.Tensor]:
        """The fixed probe image (the first training image, on the CPU; None before the first step)."""
        return self._probe

    def elapsed(self) -> float:
        return self._elapsed_before + (time.time() - self._start if self._start is not None else 0.0)

    @override
    def state_dict(self) -> dict:
        return {
            "elapsed_s": self.elapsed(),
            "probe": self._probe,
            "alpha_first": self._alpha_first,
            "started": self._started,
        }

    @override
    def load_state_dict(self, state: dict) -> None:
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self._probe, self._alpha_first = state.get("probe"), state.get("alpha_first")
        self._started = state.get("started") or self._started

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._probe is None:
            self._probe = batch[0][:1].detach().cpu().clone()
        if self._alpha_first is None:
            self._alpha_first = {"step": int(trainer.global_step), "layers": alpha_summary(pl_module, self._probe)}

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        # dense alpha's distribution over the probe at every periodic validation (not the sanity check: nothing
        # trained yet, and a resumed run's was sent before it stopped), to W&B, rank 0
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        log_dense_alpha_histograms(pl_module, self._probe)

    def provenance(self, trainer) -> dict[str, Any]:
        """What produced the run (:mod:`polypool.provenance`): software, hardware, its start (first attempt) and end,
        and the device-hours of its wall time over every attempt."""
        hardware = provenance.hardware(trainer)
        return {
            "software": provenance.software(),
            "hardware": hardware,
            "started": self._started,
            "ended": provenance.now(),
            **provenance.device_hours(self.elapsed(), hardware),
        }

    def record_path(self, trainer, pl_module) -> Path:
        dataset = self.dataset or getattr(trainer.datamodule, "dataset_name", "dataset")
        experiment = self.experiment or backbone_family(pl_module.hparams.backbone)
        seed = self.seed if self.seed is not None else 0
        return record_file(self.root, dataset, experiment, pl_module.hparams.pooling, seed)

    @override
    def on_fit_end(self, trainer, pl_module) -> None:
        # Every rank evaluates its share of the whole val set (also a run resumed at max_steps, which trained no
        # step now); the metric is reduced over the ranks, then rank 0 writes.
        evaluation = final_evaluation(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        iou = evaluation["iou"]
        per_class = nan_to_none(iou)
        path = self.record_path(trainer, pl_module)
        alpha = {}
        if self._probe is not None:
            last = alpha_summary(pl_module, self._probe)
            if last:
                alpha = {
                    "probe": "the first training image (dense alpha: statistics over its alpha map)",
                    "first": self._alpha_first,
                    "last": {"step": int(trainer.global_step), "layers": last},
                }
        record = {
            "dataset": path.parts[-4],
            "experiment": path.parts[-3],
            "config_files": list(self.config_files),
            "backbone": pl_module.hparams.backbone,
            "pooling": pl_module.hparams.pooling,
            "seed": self.seed,
            "class_names": list(pl_module.class_names),
            "per_class_iou": per_class,
            "miou": float(torch.nanmean(iou)),
            # detail metrics (polypool.metrics): Boundary IoU at d = 2% of the diagonal, trimap mIoU per band width
            "boundary_iou": {
                "per_class": nan_to_none(evaluation["boundary_iou"]),
                "mean": float(torch.nanmean(evaluation["boundary_iou"])),
            },
            "trimap_miou": {str(w): float(torch.nanmean(v)) for w, v in evaluation["trimap"].items()},
            "alpha": alpha,
            "config_hash": config_hash(self.config),
            "git_commit": git_commit(),
            "steps": int(trainer.global_step),
            "wall_time_s": round(self.elapsed(), 1),
            "provenance": self.provenance(trainer),
        }
        try:  # complete or not there: a truncated record would count as a finished run
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        except OSError as error:
            if error.errno in NO_SPACE_ERRNOS:
                raise NoSpaceError(
                    f"no space left on device to write the run record {path.name} in {path.parent} "
                    f"({format_bytes(free_bytes(path.parent))} free there); nothing half-written was "
                    f"left. Free some space, then run the same command with --ckpt_path last: it "
                    f"evaluates the finished run again and writes the record"
                ) from error
            raise


def nan_to_none(values: torch.Tensor) -> list[Optional[float]]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def backbone_family(backbone: str) -> str:
    for family in ("vgg", "resnet", "inception"):
        if backbone.startswith(family):
            return family
    return backbone
