"""Callbacks of the reproduction: one machine-readable record per finished run, the learned alpha over training,
and a qualitative panel."""

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


class AlphaHistory(L.Callback):
    """Appends the alpha of every P-pooling layer of a :class:`SegmentationModel` to ``<default_root_dir>/alpha_history.jsonl`` every
    ``every_n_steps`` training steps (step 0, before the first update, included) and when training ends, so the
    alpha notebook can plot its histograms over training from the run's own folder (W&B's histograms live in its
    binary run files).

    One JSON line per snapshot: ``{"step": s, "layers": {name: {"mode", "range", "mean", "min", "max", "values",
    "sampled", "hist": {"edges", "counts"}}}}``. In layer/channel mode ``values`` is the alpha itself (one or C
    numbers). A dense alpha depends on the input, so it is taken over a fixed probe image (the first training image
    this callback sees): statistics and histogram over the whole alpha map, and ``values`` a fixed random sample of
    at most ``max_values`` of its entries (the same positions in every snapshot; ``sampled`` is true), so that
    histograms at any resolution can be drawn later. ``hist`` has ``bins`` equal bins over the layer's
    ``alpha_range``. Models without P-pooling write nothing.
    """

    filename = "alpha_history.jsonl"

    def __init__(self, every_n_steps: int = 100, bins: int = 50, max_values: int = 1024):
        if every_n_steps < 1 or bins < 1 or max_values < 1:
            raise ValueError(f"AlphaHistory needs every_n_steps, bins and max_values >= 1, got {every_n_steps}, "
                             f"{bins}, {max_values}")
        self.every_n_steps, self.bins, self.max_values = every_n_steps, bins, max_values
        self._probe: Optional[torch.Tensor] = None
        self._last_step: Optional[int] = None
        self._sample_positions: dict[str, torch.Tensor] = {}

    def path(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._probe is None:
            self._probe = batch[0][:1].detach().clone()
        if trainer.global_step % self.every_n_steps == 0:
            self._write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    @torch.no_grad()
    def snapshot(self, pl_module) -> dict:
        """``{layer name: statistics}`` of every P-pooling layer of the model, now."""
        from .pooling import PPool2d

        backbone = pl_module.network.backbone  # the names are those of the alpha/<name>/... scalars
        layers = {name: module for name, module in backbone.named_modules() if isinstance(module, PPool2d)}
        dense = {}
        if self._probe is not None and any(m.alpha_mode == "dense" for m in layers.values()):
            # In eval mode: a training-mode forward would update the BatchNorm statistics (and fails on one image
            # at 1x1 resolution), so the probe must not touch the training.
            was_training = pl_module.training
            pl_module.eval()
            try:
                dense = pl_module.dense_alpha_maps(self._probe.to(pl_module.device))
            finally:
                pl_module.train(was_training)
        stats = {}
        for name, module in layers.items():
            low, high = module.alpha_range
            if module.alpha_mode == "dense":
                alpha = dense[name].flatten()
                if name not in self._sample_positions:
                    generator = torch.Generator().manual_seed(0)
                    self._sample_positions[name] = torch.randperm(alpha.numel(), generator=generator)[:self.max_values]
                values = alpha[self._sample_positions[name]]
            else:
                alpha = module.current_alpha().detach().float().cpu().flatten()
                values = alpha
            top = high if high > low else low + 1.0  # a fixed alpha (low == high) still gets bins
            counts = torch.histc(alpha, bins=self.bins, min=low, max=top)
            edges = torch.linspace(low, top, self.bins + 1)
            stats[name] = {"mode": module.alpha_mode, "range": [low, high], "mean": alpha.mean().item(),
                           "min": alpha.min().item(), "max": alpha.max().item(),
                           "values": [round(v, 6) for v in values.tolist()], "sampled": module.alpha_mode == "dense",
                           "hist": {"edges": edges.tolist(), "counts": counts.int().tolist()}}
        return stats

    def _write(self, trainer, pl_module) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or step == self._last_step:
            return
        layers = self.snapshot(pl_module)
        if not layers:
            return
        self._last_step = step
        path = self.path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:  # appending: a resumed run adds to its history
            f.write(json.dumps({"step": step, "layers": layers}) + "\n")


def load_alpha_history(path) -> list[dict]:
    """The snapshots of an ``alpha_history.jsonl``, by step; a step written twice (a resumed run) keeps the last."""
    by_step = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            snapshot = json.loads(line)
            by_step[snapshot["step"]] = snapshot
    return [by_step[step] for step in sorted(by_step)]


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
