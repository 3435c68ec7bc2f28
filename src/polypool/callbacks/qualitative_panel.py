"""Image | ground truth | prediction panels of the validation images, to W&B: :class:`QualitativePanel`."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from typing_extensions import override

from .. import wandb_keys as keys


class QualitativePanel(L.Callback):
    """Each validation, logs image | ground truth | prediction for the first ``num_images`` images of the first
    batch to W&B (other loggers cannot hold images), coloured with the dataset's palette; the final evaluation logs
    one too (:func:`send_evaluation_to_wandb`), under the same key."""

    def __init__(self, num_images: int = 2):
        self.num_images = num_images

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or not pl_module._wandb_runs():
            return
        images, masks = batch[:2]
        with torch.no_grad():
            preds = pl_module(images[: self.num_images]).argmax(1)
        self.log_panel(trainer, pl_module, images, masks, preds)

    def log_panel(
        self,
        trainer,
        pl_module,
        images: torch.Tensor,
        masks: torch.Tensor,
        preds: torch.Tensor,
        caption: str = "image | ground truth | prediction",
    ) -> None:
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
