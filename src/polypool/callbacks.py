"""Callbacks of the reproduction: one machine-readable record per finished run, and a qualitative panel."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def config_hash(config: Optional[dict]) -> str:
    if not config:
        return "none"
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


class RunRecord(L.Callback):
    """Writes ``<root>/<dataset>/<backbone>/<pooling>/<seed>.json`` when a fit ends: per-class IoU (NaN for absent
    classes, written as null), mIoU, class names, the config hash, the git commit, steps and wall time.

    ``dataset`` and ``backbone`` default to the DataModule's ``dataset_name`` and the model's backbone family
    (vgg16 -> "vgg", resnet* -> "resnet", inception* -> "inception"). The CLI passes the resolved config.
    """

    def __init__(self, root: str = "results/runs", dataset: Optional[str] = None, backbone: Optional[str] = None):
        self.root, self.dataset, self.backbone = Path(root), dataset, backbone
        self.config: Optional[dict] = None
        self.seed: Optional[int] = None
        self._start: Optional[float] = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.time()

    def record_path(self, trainer, pl_module) -> Path:
        dataset = self.dataset or getattr(trainer.datamodule, "dataset_name", "dataset")
        backbone = self.backbone or backbone_family(pl_module.hparams.backbone)
        seed = self.seed if self.seed is not None else 0
        return self.root / dataset / backbone / pl_module.hparams.pooling / f"{seed}.json"

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        if pl_module.last_val_iou is None:  # no validation ran yet: validate once for the record
            trainer.validate(pl_module, datamodule=trainer.datamodule, verbose=False)
        iou = pl_module.last_val_iou
        per_class = [None if math.isnan(v) else float(v) for v in iou.tolist()]
        record = {
            "dataset": self.record_path(trainer, pl_module).parts[-4],
            "backbone": pl_module.hparams.backbone,
            "pooling": pl_module.hparams.pooling,
            "seed": self.seed,
            "class_names": list(pl_module.class_names),
            "per_class_iou": per_class,
            "miou": float(torch.nanmean(iou)),
            "config_hash": config_hash(self.config),
            "git_commit": git_commit(),
            "steps": int(trainer.global_step),
            "wall_time_s": round(time.time() - (self._start or time.time()), 1),
        }
        path = self.record_path(trainer, pl_module)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")


def backbone_family(backbone: str) -> str:
    for family in ("vgg", "resnet", "inception"):
        if backbone.startswith(family):
            return family
    return backbone


class QualitativePanel(L.Callback):
    """Each validation, logs image | ground truth | prediction for the first ``num_images`` images of the first
    batch to W&B (other loggers cannot hold images), coloured with the dataset's palette."""

    def __init__(self, num_images: int = 2):
        self.num_images = num_images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or not pl_module._wandb_runs():
            return
        import wandb

        images, masks = batch
        with torch.no_grad():
            preds = pl_module(images[: self.num_images]).argmax(1)
        panel = make_panel(images[: self.num_images], masks[: self.num_images], preds, trainer.datamodule)
        for run in pl_module._wandb_runs():
            run.log({"val/panel": wandb.Image(panel, caption="image | ground truth | prediction"),
                     "trainer/global_step": trainer.global_step})


def make_panel(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor, datamodule: Any) -> np.ndarray:
    """Rows of image | ground truth | prediction, uint8 RGB; the ignore label is drawn white."""
    mean = torch.tensor(datamodule.mean).view(3, 1, 1)
    std = torch.tensor(datamodule.std).view(3, 1, 1)
    palette = np.asarray(datamodule.palette, dtype=np.uint8).copy()
    palette[255] = 255
    rows = []
    for image, mask, pred in zip(images.cpu(), masks.cpu(), preds.cpu()):
        rgb = ((image * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        rows.append(np.concatenate([rgb, palette[mask.numpy()], palette[pred.numpy()]], axis=1))
    return np.concatenate(rows, axis=0)
