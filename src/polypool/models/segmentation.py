"""``SegmentationModel``: the paper's networks with any pooling swapped in, as a LightningModule.

It holds the model, the loss, the metrics and the optimiser configuration only; data lives in the DataModules.
Every knob is a typed ``__init__`` argument, so LightningCLI exposes it (``--model.pooling ppool``, ...).
Train with ``Trainer(deterministic="warn")`` at most: bilinear upsampling's backward and NLLLoss have no
deterministic CUDA kernels, so ``deterministic=True`` would fail on GPU.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex

from ..data.classes import IGNORE_INDEX, VOC_CLASSES
from ..pooling import PPool2d, pooling_parameters
from ..surgery import SwapReport, swap_pooling
from .networks import build_network


# What the paper's authors used where the registry's defaults differ (facts.md): P-pooling with dense alpha from
# the side branch, initialised at 30 and clamped to [1, 50]; DPP "lite asym" (the registry default).
PAPER_POOLING_KWARGS: dict[str, dict[str, Any]] = {
    "ppool": {"alpha_mode": "dense", "alpha_init": 30.0, "alpha_range": (1.0, 50.0)},
}


class SegmentationModel(L.LightningModule):
    """A DeepLab-style network (VGG16-LargeFOV, dilated ResNet + ASPP, Inception + ASPP) whose every local pooling
    layer is replaced by ``pooling`` (a name of :func:`polypool.pooling.build_pooling`).

    Args:
        backbone: a timm model name: ``vgg16`` (Table 1), ``resnet101``/``resnet50`` (Table 2), ``inception_v3``.
        pretrained: load timm's ImageNet weights (needs network, or ``weights``).
        weights: a local weights file for the backbone, loaded by timm (``pretrained_cfg_overlay=dict(file=...)``).
        pooling: ``max`` (the pre-trained backbone as it is), ``avg``, ``strided_conv``, ``gated``, ``mixed``,
            ``dpp``, ``lp`` or ``ppool``.
        pooling_kwargs: options of the pooling layers (``alpha_mode``, ``alpha_init``, ``alpha_range``, ...);
            None takes :data:`PAPER_POOLING_KWARGS` for that pooling (the authors' settings, facts.md).
        head: ``auto`` (LargeFOV for vgg16, ASPP otherwise), ``largefov`` or ``aspp``.
        num_classes, ignore_index: of the dataset (LightningCLI links them from the DataModule).
        class_names: for logging per-class IoU by name (default: VOC's for 21 classes).
        output_stride: 8 (DeepLab) for VGG16 and ResNets; 32 for inception_v3 (timm has no dilated variant).
        lr, momentum, weight_decay, poly_power: SGD with a poly schedule, lr * (1 - step/max_steps)^poly_power.
        head_lr_mult: the new head learns ``head_lr_mult`` times faster (DeepLab's x10).
        pooling_lr_mult: learning-rate multiplier of the pooling parameters (alpha, gates, DPP, ...), which also
            get no weight decay.
        tta_flip, tta_scales: test-time augmentation in ``predict_step`` (horizontal flip; input scales).
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        pretrained: bool = False,
        weights: Optional[str] = None,
        pooling: str = "max",
        pooling_kwargs: Optional[dict[str, Any]] = None,
        head: str = "auto",
        num_classes: int = 21,
        ignore_index: int = IGNORE_INDEX,
        class_names: Optional[Sequence[str]] = None,
        output_stride: int = 8,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        head_lr_mult: float = 10.0,
        pooling_lr_mult: float = 1.0,
        tta_flip: bool = False,
        tta_scales: Sequence[float] = (1.0,),
        swap_input_size: tuple[int, int, int] = (3, 128, 128),
    ):
        super().__init__()
        self.save_hyperparameters()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.class_names = list(class_names) if class_names is not None else (
            list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)])
        self.network = build_network(backbone, num_classes, head, output_stride, pretrained, weights)
        if pooling_kwargs is None:
            pooling_kwargs = PAPER_POOLING_KWARGS.get(pooling, {})
        self.swap_report: SwapReport = swap_pooling(self.network.backbone, pooling, input_size=swap_input_size,
                                                    **pooling_kwargs)
        self.loss = nn.CrossEntropyLoss(ignore_index=ignore_index)
        # The benchmark mIoU: a dataset-level confusion matrix (reduced over DDP ranks), absent classes NaN.
        self.val_iou = MulticlassJaccardIndex(num_classes, average=None, ignore_index=ignore_index,
                                              validate_args=False, zero_division=float("nan"))
        self.last_val_iou: Optional[Tensor] = None

    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    # -- training and evaluation -------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else 0.0)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, masks = batch
        logits = self(images)
        self.log("val/loss", self.loss(logits, masks), sync_dist=True)
        self.val_iou.update(logits.argmax(1), masks)
        if batch_idx == 0 and self._wandb_runs():
            self._log_dense_alpha_maps(images)

    def on_validation_epoch_end(self) -> None:
        per_class = self.val_iou.compute()
        self.val_iou.reset()
        self.last_val_iou = per_class.detach().cpu()
        self.log("val/mIoU", torch.nanmean(per_class), prog_bar=True, sync_dist=False)
        for name, iou in zip(self.class_names, per_class):
            self.log(f"val/IoU/{name}", iou)
        self.log_pooling_parameters()

    def log_pooling_parameters(self) -> None:
        """Mean/min/max alpha of every P-pooling layer (histograms too, with a W&B logger)."""
        for name, module in self.network.backbone.named_modules():
            if isinstance(module, PPool2d):
                stats = module.alpha_stats()
                for key in ("mean", "min", "max"):
                    if not math.isnan(stats[key]):
                        self.log(f"alpha/{name}/{key}", stats[key])
                self._log_histogram(f"alpha/{name}/hist", stats.get("per_channel"))

    def _wandb_runs(self) -> list:
        """The W&B runs among the loggers (histograms and images go there; CSV keeps the scalars)."""
        if self._trainer is None:
            return []
        return [logger.experiment for logger in self.loggers if type(logger).__name__ == "WandbLogger"]

    def _log_histogram(self, key: str, values: Optional[Tensor]) -> None:
        if values is None:
            return
        for run in self._wandb_runs():
            import wandb

            run.log({key: wandb.Histogram(values.numpy()), "trainer/global_step": self.global_step})

    @torch.no_grad()
    def dense_alpha_maps(self, images: Tensor) -> dict[str, Tensor]:
        """The alpha map ``(C, H_out, W_out)`` of every dense P-pooling layer, for the first image of ``images``."""
        captured: dict[str, Tensor] = {}
        hooks = [module.register_forward_hook(
            lambda mod, inputs, output, name=name: captured.__setitem__(
                name, mod.current_alpha(inputs[0][:1])[0].detach().float().cpu()))
            for name, module in self.network.backbone.named_modules()
            if isinstance(module, PPool2d) and module.alpha_mode == "dense"]
        try:
            if hooks:
                self(images[:1])
        finally:
            for hook in hooks:
                hook.remove()
        return captured

    def _log_dense_alpha_maps(self, images: Tensor) -> None:
        maps = self.dense_alpha_maps(images)
        for run in self._wandb_runs():
            import wandb

            for name, alpha in maps.items():  # the channel mean, scaled to the alpha range for display
                low, high = self.network.backbone.get_submodule(name).alpha_range
                image = ((alpha.mean(0) - low) / max(high - low, 1e-6)).clamp(0, 1).numpy()
                run.log({f"alpha_map/{name}": wandb.Image(image, caption=f"mean alpha over channels, "
                                                                        f"[{low:g}, {high:g}] -> [0, 1]"),
                         "trainer/global_step": self.global_step})

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class maps ``(N, H, W)`` at the input resolution, averaging logits over ``tta_scales`` and flips."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_logits(images).argmax(1)

    def predict_logits(self, images: Tensor) -> Tensor:
        size = images.shape[-2:]
        total = 0.0
        for scale in self.hparams.tta_scales:
            scaled = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear",
                                                             align_corners=False)
            views = [scaled, scaled.flip(-1)] if self.hparams.tta_flip else [scaled]
            for i, view in enumerate(views):
                logits = self(view)
                logits = logits.flip(-1) if i == 1 else logits
                total = total + F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
        return total

    # -- optimisation -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """backbone x1 (weight decay), head x head_lr_mult (weight decay), pooling x pooling_lr_mult (none)."""
        hp = self.hparams
        pooling = [p for _, p in pooling_parameters(self.network.backbone)]
        pooling_ids = {id(p) for p in pooling}
        backbone = [p for p in self.network.backbone.parameters() if id(p) not in pooling_ids]
        groups = [
            {"name": "backbone", "params": backbone, "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"name": "head", "params": list(self.network.head.parameters()), "lr": hp.lr * hp.head_lr_mult,
             "weight_decay": hp.weight_decay},
            {"name": "pooling", "params": pooling, "lr": hp.lr * hp.pooling_lr_mult, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameter_groups(), lr=hp.lr, momentum=hp.momentum,
                                    weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(1.0 - step / total, 0.0) ** hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
