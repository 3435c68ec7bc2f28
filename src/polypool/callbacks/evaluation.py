"""The final evaluation: the trained model on the whole val set under its test-time protocol, with the detail metrics,
reduced over the DDP ranks; :class:`RunRecord` writes its numbers. It also sends W&B what a periodic validation sends.

It is a loop of its own, not Lightning's ``trainer.validate`` (which would give other numbers and logs): it runs in
``on_fit_end``, after the fit's ``Trainer._teardown`` (which moved the module to the CPU: hence the move back to the
device and, after, to where teardown put it); a ``trainer.validate`` there would be a second trainer run inside the
fit's, which Lightning does not support (it sets ``trainer.state.fn`` to validating, so the fit's own teardown hooks
would then be called for "validate"). And ``trainer.validate`` would obey ``limit_val_batches`` (0 in the quick
preset: no batch at all), run ``validation_step`` (logging ``val/...``, not ``final/...``, without the detail
metrics) and every callback's validation hooks (a second panel, checkpoints' bookkeeping), where the record needs
the whole val set under the model's test-time protocol (:meth:`SegmentationModel.evaluation_prediction`) with fresh
metrics.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch

from .. import wandb_keys as keys
from ..metrics import BoundaryIoU, TrimapIoU
from .alpha import log_dense_alpha_histograms
from .qualitative_panel import QualitativePanel


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
                from .run_record import RunRecord  # here: run_record imports this module (RunRecord calls it)

                probe = next((c.probe for c in getattr(trainer, "callbacks", []) if isinstance(c, RunRecord)), None)
            try:
                with trainer.precision_plugin.forward_context():  # on the device, in eval mode, as validation
                    send_evaluation_to_wandb(trainer, pl_module, *first, probe=probe)
            except Exception as error:
                warnings.warn(
                    f"the final evaluation's alpha maps, panel and histograms could not be sent to W&B "
                    f"({type(error).__name__}: {error}); the metrics and the run record are not affected",
                    stacklevel=2,
                )
    finally:
        pl_module.train(was_training)
        pl_module.to(left_on)
    result = {
        "iou": iou,
        "boundary_iou": boundary,
        "device": device,
        "trimap": {w: trimap[i] for i, w in enumerate(trimap_metric.widths)},
    }
    if trainer.is_global_zero:
        values = {keys.FINAL_MIOU: float(torch.nanmean(iou)), keys.FINAL_BOUNDARY_MIOU: float(torch.nanmean(boundary))}
        values.update({keys.final_trimap_miou(w): float(torch.nanmean(v)) for w, v in result["trimap"].items()})
        values.update({keys.class_iou(keys.FINAL, name): float(v) for name, v in zip(pl_module.class_names, iou)})
        for logger in trainer.loggers:
            logger.log_metrics(values, step=int(trainer.global_step))
            logger.save()
    return result


@torch.no_grad()
def send_evaluation_to_wandb(
    trainer,
    pl_module,
    images: torch.Tensor,
    masks: torch.Tensor,
    preds: torch.Tensor,
    probe: Optional[torch.Tensor] = None,
) -> None:
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
            callback.log_panel(
                trainer, pl_module, images, masks, preds, caption="image | ground truth | prediction (final evaluation)"
            )
