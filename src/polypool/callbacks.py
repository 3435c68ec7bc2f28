"""Callbacks of the reproduction: one machine-readable record per finished run, the learned alpha over training,
and a qualitative panel."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from . import provenance
from . import wandb_keys as keys


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


DEFAULT_RECORDS_ROOT = "results/runs"


def record_file(root, dataset: str, experiment: str, pooling: str, seed: int) -> Path:
    """Where a run's record lives: ``<root>/<dataset>/<experiment>/<pooling>/<seed>.json``. The one owner of that
    layout: the reproduction harness, the tables and the notebooks find records with it."""
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

    def __init__(self, root: str = DEFAULT_RECORDS_ROOT, dataset: Optional[str] = None, experiment: Optional[str] = None):
        self.root, self.dataset, self.experiment = Path(root), dataset, experiment
        self.config: Optional[dict] = None
        self.config_files: list[str] = []
        self.seed: Optional[int] = None
        self._start: Optional[float] = None
        self._elapsed_before = 0.0  # wall time of earlier attempts of this run (from the checkpoint)
        self._probe: Optional[torch.Tensor] = None
        self._alpha_first: Optional[dict] = None
        self._started: Optional[str] = None  # when the run's first attempt started (UTC, ISO 8601)

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

    def state_dict(self) -> dict:
        return {"elapsed_s": self.elapsed(), "probe": self._probe, "alpha_first": self._alpha_first,
                "started": self._started}

    def load_state_dict(self, state: dict) -> None:
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self._probe, self._alpha_first = state.get("probe"), state.get("alpha_first")
        self._started = state.get("started") or self._started

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
        return {"software": provenance.software(), "hardware": hardware, "started": self._started,
                "ended": provenance.now(), **provenance.device_hours(self.elapsed(), hardware)}

    def record_path(self, trainer, pl_module) -> Path:
        dataset = self.dataset or getattr(trainer.datamodule, "dataset_name", "dataset")
        experiment = self.experiment or backbone_family(pl_module.hparams.backbone)
        seed = self.seed if self.seed is not None else 0
        return record_file(self.root, dataset, experiment, pl_module.hparams.pooling, seed)

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
                alpha = {"probe": "the first training image (dense alpha: statistics over its alpha map)",
                         "first": self._alpha_first, "last": {"step": int(trainer.global_step), "layers": last}}
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
            "boundary_iou": {"per_class": nan_to_none(evaluation["boundary_iou"]),
                             "mean": float(torch.nanmean(evaluation["boundary_iou"]))},
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
                raise NoSpaceError(f"no space left on device to write the run record {path.name} in {path.parent} "
                                   f"({format_bytes(free_bytes(path.parent))} free there); nothing half-written was "
                                   f"left. Free some space, then run the same command with --ckpt_path last: it "
                                   f"evaluates the finished run again and writes the record") from error
            raise


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(RuntimeError):
    """The disk (or quota) is full: a file could not be written, nothing half-written was left; the message names
    the folder and the space needed. The CLI prints it and exits with status 1 instead of a traceback."""


def format_bytes(count: Optional[float]) -> str:
    if count is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"


def free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file in ``path``'s folder, flushes it to disk, then renames it to ``path``
    (``os.replace``, atomic on POSIX): ``path`` is either its old content or the whole new one, never a part. On an
    error the temporary file is removed and the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = temporary_name(path)
        with open(tmp, "x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def temporary_name(path: Path) -> Path:
    """A fresh hidden name beside ``path`` (same folder, so same file system: the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


class DamagedRecord(ValueError):
    """A run record that is there but cannot be used (truncated, not JSON, missing its IoU); ``path`` and ``why``
    say which and what is wrong, the message also says what to do."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"damaged run record {self.path} ({why}): move it aside (e.g. to {self.path.name}.damaged) "
                         f"or delete it, and train the run again (reproduce.sh does both itself)")


RECORD_KEYS = ("per_class_iou", "miou")


def read_record(path: Path, required: tuple[str, ...] = RECORD_KEYS) -> dict:
    """A run record written by :class:`RunRecord`, checked: it parses as a JSON object and has the ``required``
    keys (``per_class_iou``: a list of numbers or nulls; ``miou``: a number, or null). Raises :class:`DamagedRecord`
    naming the file, what is wrong and the fix. The table (``polypool.tables``) and the sweep's status
    (``polypool.sweep.inspect_run``) read records through this."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedRecord(path, f"cannot be read: {error}") from error
    if not text.strip():
        raise DamagedRecord(path, "empty file")
    try:
        record = json.loads(text)
    except ValueError as error:
        truncated = not text.rstrip().endswith(("}", "]"))  # RunRecord's JSON ends with its closing brace
        raise DamagedRecord(path, ("truncated, not valid JSON: " if truncated else "not valid JSON: ")
                            + f"{getattr(error, 'msg', error)} at line {getattr(error, 'lineno', '?')} column "
                              f"{getattr(error, 'colno', '?')}") from error
    if not isinstance(record, dict):
        raise DamagedRecord(path, f"a JSON {type(record).__name__}, not an object")
    missing = [key for key in required if key not in record]
    if missing:
        raise DamagedRecord(path, "no " + ", ".join(repr(key) for key in missing))
    per_class = record.get("per_class_iou")
    if "per_class_iou" in record and not (isinstance(per_class, list) and per_class and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in per_class)):
        raise DamagedRecord(path, "'per_class_iou' is not a list of numbers")
    miou = record.get("miou")
    if miou is not None and (isinstance(miou, bool) or not isinstance(miou, (int, float))):
        raise DamagedRecord(path, "'miou' is not a number")
    return record


@torch.no_grad()
def final_evaluation(trainer, pl_module, probe: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """``pl_module`` on the DataModule's whole val set (no ``limit_val_batches``), under the model's test-time
    protocol, with fresh metrics reduced over the DDP ranks; called on every rank, on the strategy's device. Returns
    ``{"iou": per-class IoU, "boundary_iou": per-class Boundary IoU, "trimap": {width: per-class IoU}, "device": the
    device it ran on}`` and logs their means as
    ``final/mIoU``, ``final/boundary_mIoU`` and ``final/trimap_mIoU/<width>px`` (and ``final/IoU/<class>``).

    It also sends W&B (rank 0's W&B runs only) what a periodic validation sends, so a run without one (the quick
    preset's) shows them too: alpha's statistics, the dense alpha maps of the first val image, the image | truth |
    prediction panel of the first val batch (with the trainer's :class:`QualitativePanel`), and the distribution of
    dense alpha over ``probe`` (default: the trainer's :class:`RunRecord`'s probe): :func:`send_evaluation_to_wandb`.
    """
    from .metrics import BoundaryIoU, TrimapIoU

    datamodule = trainer.datamodule
    if getattr(datamodule, "val_dataset", None) is None:
        datamodule.setup("validate")
    # on_fit_end runs after Lightning's teardown, which has moved the module to the CPU: evaluate on the device
    # the run trained on (a GPU node would otherwise evaluate on the CPU, and NCCL cannot reduce CPU tensors), and
    # leave the module where teardown put it
    device, left_on = trainer.strategy.root_device, pl_module.device
    pl_module.to(device)
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        # DDP copies rank 0's buffers (BatchNorm statistics) at each training forward only, so after the last step
        # every rank holds its own: evaluate rank 0's, the ones the checkpoint holds, on every rank
        for buffer in pl_module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)
    iou_metric = pl_module.val_iou.clone()
    iou_metric.reset()
    num_classes, ignore = pl_module.hparams.num_classes, pl_module.hparams.ignore_index
    boundary_metric = BoundaryIoU(num_classes, ignore_index=ignore).to(device)
    trimap_metric = TrimapIoU(num_classes, ignore_index=ignore).to(device)
    was_training = pl_module.training
    pl_module.eval()
    first = None  # the first batch and its prediction, for W&B's media
    try:
        with trainer.precision_plugin.forward_context():
            for images, masks, sizes in datamodule.val_dataloader():
                images, masks = images.to(device), masks.to(device)
                preds = pl_module.evaluation_prediction(images)
                if first is None:
                    first = (images, masks, preds)
                iou_metric.update(preds, masks)  # the padding is 255: ignored
                for metric in (boundary_metric, trimap_metric):  # each image at its own size
                    metric.update(preds, masks, sizes)
        iou = iou_metric.compute().detach().float().cpu()
        boundary = boundary_metric.compute().cpu()
        trimap = trimap_metric.compute().cpu()
        if first is not None and trainer.is_global_zero:
            if probe is None:
                probe = next((c.probe for c in getattr(trainer, "callbacks", []) if isinstance(c, RunRecord)), None)
            try:
                with trainer.precision_plugin.forward_context():  # on the device, in eval mode, as validation
                    send_evaluation_to_wandb(trainer, pl_module, *first, probe=probe)
            except Exception as error:  # noqa: BLE001 - W&B's pictures must not cost the run its record
                warnings.warn(f"the final evaluation's alpha maps, panel and histograms could not be sent to W&B "
                              f"({type(error).__name__}: {error}); the metrics and the run record are not affected",
                              stacklevel=2)
    finally:
        pl_module.train(was_training)
        pl_module.to(left_on)
    result = {"iou": iou, "boundary_iou": boundary, "device": device,
              "trimap": {w: trimap[i] for i, w in enumerate(trimap_metric.widths)}}
    if trainer.is_global_zero:
        values = {keys.FINAL_MIOU: float(torch.nanmean(iou)),
                  keys.FINAL_BOUNDARY_MIOU: float(torch.nanmean(boundary))}
        values.update({keys.final_trimap_miou(w): float(torch.nanmean(v)) for w, v in result["trimap"].items()})
        values.update({keys.class_iou(keys.FINAL, name): float(v) for name, v in zip(pl_module.class_names, iou)})
        for logger in trainer.loggers:
            logger.log_metrics(values, step=int(trainer.global_step))
            logger.save()
    return result


@torch.no_grad()
def send_evaluation_to_wandb(trainer, pl_module, images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor,
                             probe: Optional[torch.Tensor] = None) -> None:
    """Sends rank 0's W&B runs what a periodic validation sends them, for an evaluation outside the validation loop
    (the final one): ``alpha/<layer>/mean|min|max`` (and a channel alpha's histogram), the dense alpha maps of the
    first of ``images`` (``alpha_map/<layer>``), the image | truth | prediction panel of ``images``, ``masks`` and
    ``preds`` (``val/panel``, with the trainer's :class:`QualitativePanel` and its ``num_images``) and the dense alpha
    distribution over ``probe`` (``alpha/<layer>/dense_hist``), all at ``trainer/global_step``. Nothing without a
    W&B logger."""
    runs = pl_module._wandb_runs()
    if not runs or not trainer.is_global_zero:
        return
    scalars = pl_module.alpha_scalars()  # a dense alpha's: of the evaluation's last forward, as in validation
    if scalars:
        for run in runs:
            run.log({**scalars, keys.STEP: int(trainer.global_step)})
    pl_module.log_alpha_histograms()
    pl_module._log_dense_alpha_maps(images)
    log_dense_alpha_histograms(pl_module, probe)
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, QualitativePanel):
            callback.log_panel(trainer, pl_module, images, masks, preds,
                               caption="image | ground truth | prediction (final evaluation)")


def log_dense_alpha_histograms(pl_module, probe: Optional[torch.Tensor]) -> None:
    """The distribution of every dense P-pooling layer's alpha over the fixed ``probe`` image (all channels and
    positions of its alpha map), as a W&B histogram over the layer's alpha range (``alpha/<layer>/dense_hist``, the
    same bins at every step: :func:`polypool.models.segmentation.alpha_histogram`), at ``trainer/global_step``. Dense
    alpha has no parameter to take a histogram of: it is computed from the input. Nothing without a W&B logger or a
    probe."""
    if probe is None or not pl_module._wandb_runs():
        return
    for name, (module, alpha) in alpha_maps(pl_module, probe).items():
        if module.alpha_mode == "dense":
            pl_module._log_histogram(keys.alpha_dense_hist(name), alpha.flatten(), module.alpha_range)


def nan_to_none(values: torch.Tensor) -> list[Optional[float]]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


@torch.no_grad()
def alpha_maps(pl_module, probe: Optional[torch.Tensor]) -> dict[str, tuple[Any, torch.Tensor]]:
    """``{layer name: (PPool2d, alpha)}`` for every P-pooling layer of a :class:`SegmentationModel`'s backbone:
    the alpha itself in layer/channel mode, the dense alpha map of ``probe`` (one image) in dense mode.

    The dense probe runs in eval mode: a training-mode forward would update the BatchNorm statistics (and fails on
    one image at 1x1 resolution), so looking at alpha must not touch the training."""
    from .pooling import PPool2d

    backbone = pl_module.network.backbone  # the names are those of the alpha/<name>/... scalars
    layers = {name: module for name, module in backbone.named_modules() if isinstance(module, PPool2d)}
    dense = {}
    if probe is not None and any(m.alpha_mode == "dense" for m in layers.values()):
        was_training = pl_module.training
        pl_module.eval()
        try:
            dense = pl_module.dense_alpha_maps(probe.to(pl_module.device))
        finally:
            pl_module.train(was_training)
    return {name: (module, dense[name] if module.alpha_mode == "dense"
                   else module.current_alpha().detach().float().cpu())
            for name, module in layers.items() if module.alpha_mode != "dense" or name in dense}


def alpha_summary(pl_module, probe: Optional[torch.Tensor]) -> dict[str, dict]:
    """Mean, spread (``std``: over channels and positions), min and max of every P-pooling layer's alpha, and for a
    dense alpha its spatial spread (``spatial_std``: each channel's std over the positions of the probe's alpha map,
    averaged over the channels; how much alpha differs from place to place, which layer/channel alpha cannot)."""
    summary = {}
    for name, (module, alpha) in alpha_maps(pl_module, probe).items():
        values = alpha.flatten().double()
        summary[name] = {"mode": module.alpha_mode, "mean": values.mean().item(),
                         "std": values.std(unbiased=False).item(), "min": values.min().item(),
                         "max": values.max().item()}
        if module.alpha_mode == "dense":  # (C, H_out, W_out)
            per_channel = alpha.double().flatten(1).std(1, unbiased=False)
            summary[name]["spatial_std"] = per_channel.mean().item()
    return summary


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
        stats = {}
        for name, (module, alpha) in alpha_maps(pl_module, self._probe).items():
            low, high = module.alpha_range
            alpha = alpha.flatten()
            if module.alpha_mode == "dense":
                if name not in self._sample_positions:
                    generator = torch.Generator().manual_seed(0)
                    self._sample_positions[name] = torch.randperm(alpha.numel(), generator=generator)[:self.max_values]
                values = alpha[self._sample_positions[name]]
            else:
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
    batch to W&B (other loggers cannot hold images), coloured with the dataset's palette; the final evaluation logs
    one too (:func:`send_evaluation_to_wandb`), under the same key."""

    def __init__(self, num_images: int = 2):
        self.num_images = num_images

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or not pl_module._wandb_runs():
            return
        images, masks = batch[:2]
        with torch.no_grad():
            preds = pl_module(images[: self.num_images]).argmax(1)
        self.log_panel(trainer, pl_module, images, masks, preds)

    def log_panel(self, trainer, pl_module, images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor,
                  caption: str = "image | ground truth | prediction") -> None:
        """The panel of the first ``num_images`` of ``images``/``masks``/``preds`` to the W&B runs (``val/panel``)."""
        runs = pl_module._wandb_runs()
        if not runs:
            return
        import wandb

        n = self.num_images
        panel = make_panel(images[:n], masks[:n], preds[:n], trainer.datamodule)
        for run in runs:
            run.log({keys.PANEL: wandb.Image(panel, caption=caption), keys.STEP: trainer.global_step})


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


class RNGState(L.Callback):
    """Checkpoints the global random generators (Python, NumPy, torch's CPU and CUDA ones) and restores them just
    before the first training step of a resumed fit, so that dropout draws the same masks as in an uninterrupted
    run and ``--ckpt_path last`` ends where the uninterrupted run ends (Lightning saves no RNG state itself).

    The state is taken when the checkpoint is written (after a validation, whose loader's seed draw is already done)
    and restored at ``on_train_batch_start``, after everything a resumed fit does before training (the sanity check,
    the loaders' seed draws) has consumed its own numbers. The data order and augmentation come from the loader's
    own generator (``ResumableLoader``), not from these."""

    def __init__(self) -> None:
        self._pending: Optional[dict] = None

    def state_dict(self) -> dict:
        import random

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain lists and tensors: the checkpoint stays loadable with torch.load(weights_only=True)
        state = {"python": random.getstate(), "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending is None:
            return
        import random

        state, self._pending = self._pending, None
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
