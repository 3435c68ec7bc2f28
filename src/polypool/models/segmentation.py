"""``SegmentationModel``: the paper's networks with any pooling swapped in, as a LightningModule.

It holds the model, the loss, the metrics and the optimiser configuration only; data lives in the DataModules.
Every knob is a typed ``__init__`` argument, so LightningCLI exposes it (``--model.pooling ppool``, ...).
Train with ``Trainer(deterministic="warn")`` at most: bilinear upsampling's backward and NLLLoss have no
deterministic CUDA kernels, so ``deterministic=True`` would fail on GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Optional, get_args

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from torchmetrics.classification import MulticlassJaccardIndex
from typing_extensions import override

from .. import wandb_keys as keys
from ..data.base import IMAGENET_MEAN, IMAGENET_STD
from ..data.classes import IGNORE_INDEX, VOC_CLASSES
from ..inference import sliding_window_logits
from ..pooling import PPool2d, pooling_parameters
from ..surgery import SwapReport, swap_pooling
from .networks import build_network

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


# Backbones that are not timm models, with the normalisation their weights were trained with: the authors' ResNet-50
# (RGB, ToTensor, Normalize(mean=[0.48108, 0.45753, 0.40787], std=[0.5, 0.5, 0.5]); their
# data/voc/VOCDataset_newstyle.py @ c31dcf926aa3f4bbbec60f53a8eac7e558aa1070, polypool.models.authors_resnet).
NON_TIMM_MEAN_STD: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "resnet50_authors": ((0.48108, 0.45753, 0.40787), (0.5, 0.5, 0.5)),
}


def backbone_mean_std(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mean/std of timm's pretrained config for ``backbone`` (name or name.tag), or of :data:`NON_TIMM_MEAN_STD`
    for a backbone that is not a timm model; ImageNet's when it has none."""
    import timm

    if backbone in NON_TIMM_MEAN_STD:
        return NON_TIMM_MEAN_STD[backbone]
    try:
        cfg = timm.models.get_pretrained_cfg(backbone)
    except Exception:
        cfg = None
    mean = getattr(cfg, "mean", None) or IMAGENET_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# What the paper's authors used where the registry's defaults differ (docs/paper_notes.md): P-pooling with dense
# alpha from the side branch, initialised at 30 and clamped to [1, 50]; DPP "lite asym" (the registry default).
PAPER_POOLING_KWARGS: dict[str, dict[str, Any]] = {
    "ppool": {"alpha_mode": "dense", "alpha_init": 30.0, "alpha_range": (1.0, 50.0)},
}
# The model's pooling choices: the registry's names, where "max" is the pre-trained backbone exactly as it is (its
# average-pooling sites stay average pooling), and "max_all" turns every site, average pools included, into max.
ModelPooling = Literal["max", "max_all", "avg", "strided_conv", "gated", "mixed", "dpp", "lp", "ppool"]
Head = Literal["auto", "vgg16_20m", "largefov", "aspp", "aspp_v3", "deeplabv3_authors"]
BatchNormPolicy = Literal["train", "frozen"]
EvalMode = Literal["whole", "sliding"]
Optimizer = Literal["sgd", "adamw"]


class SegmentationModel(L.LightningModule):
    """A DeepLab-style network (VGG16 in the authors' or DeepLab-LargeFOV's layout, dilated ResNet + ASPP, Inception
    + ASPP) whose every local pooling layer is replaced by ``pooling``.

    Args:
        backbone: a timm model name, with a weights tag where it matters (``resnet101.tv_in1k``): ``vgg16``
            (Table 1), ``resnet50``/``resnet101`` (Table 2), ``inception_v3``; or ``resnet50_authors``, the
            authors' own ResNet-50 (:mod:`polypool.models.authors_resnet`; weights: CSAIL's resnet50-imagenet.pth).
        pretrained: load timm's ImageNet weights (needs network, or ``weights``).
        weights: a local weights file for the backbone, loaded by timm (``pretrained_cfg_overlay=dict(file=...)``).
        network_weights: start the whole segmentation network (backbone and head) from a trained one, before the
            pooling swap: a Lightning checkpoint of this model (``.ckpt``) or a ``network`` state dict. The CPU
            miniature fine-tunes every pooling from one network trained with max pooling, as the paper fine-tunes
            from ImageNet's VGG16 (configs/trainer/quick.yaml).
        pooling: ``max`` (the pre-trained backbone as it is: no site changes), ``max_all`` (every site max
            pooling, average pools included), or a pooling of :func:`polypool.pooling.build_pooling` at every site:
            ``avg``, ``strided_conv``, ``gated``, ``mixed``, ``dpp``, ``lp`` or ``ppool``.
        pooling_kwargs: options of the pooling layers (``alpha_mode``, ``alpha_init``, ``alpha_range``, ...);
            None takes :data:`PAPER_POOLING_KWARGS` for that pooling (the authors' settings).
        head: ``vgg16_20m`` (the authors' VGG16: 2x2 pools, fc6 3x3 dilation 1) or ``largefov`` (DeepLab-LargeFOV)
            for vgg16; ``aspp`` (DeepLab v2) or ``aspp_v3`` (DeepLabv3) for the others; ``deeplabv3_authors`` (the
            authors' DeepLabv3 decoder; resnet50_authors' only head); ``auto``: largefov / aspp / deeplabv3_authors.
        num_classes, ignore_index: of the dataset (LightningCLI links them from the DataModule).
        class_names: for logging per-class IoU by name (default: VOC's for 21 classes).
        output_stride: 8 for VGG16; 8 or 16 for ResNets; 32 for inception_v3 (timm has no dilated variant).
        lr, momentum, weight_decay, poly_power: SGD with a poly schedule, lr * (1 - step/max_steps)^poly_power,
            for the per-pixel **mean** cross-entropy (the authors' summed loss needs its lr divided by H x W).
        optimizer: ``sgd`` (the paper's, with ``momentum``) or ``adamw`` (decoupled weight decay; the CPU
            miniature's, which trains VGG16 from scratch in minutes). The lr multipliers apply to both.
        head_lr_mult: the layers that never come from ImageNet weights (the classifier; the whole ASPP head)
            learn ``head_lr_mult`` times faster (DeepLab's x10).
        bias_lr_mult: biases learn ``bias_lr_mult`` times faster (DeepLab's Caffe models: x2).
        decay_norm_and_bias: apply weight decay to biases and normalisation parameters too (off: only weights of
            convolutions and linear layers decay).
        batchnorm: ``train`` (BatchNorm statistics and affine parameters train; SyncBN under the ddp preset) or
            ``frozen`` (the backbone's BatchNorm layers stay in eval mode with fixed parameters, as DeepLab v2).
        pooling_lr_mult: learning-rate multiplier of the learned poolings' parameters (layer/channel alpha, gates,
            DPP, Lp, Strided-C), which get no weight decay.
        alpha_conv_lr_mult, alpha_prelu_lr_mult, alpha_bias_lr_mult: the dense alpha branch's parts (the depthwise
            k x k and 1x1 convs' weights, with weight decay; the PReLU slopes and the 1x1 conv's bias, without).
            The authors: x1, x100, x180.
        alpha_grad_scale: multiplies the gradient that reaches alpha (the authors: x3); P-pooling only.
        tta_flip, tta_scales: test-time augmentation (horizontal flip; input scales) in validation, the final
            evaluation and ``predict_step``.
        eval_mode: ``whole`` (one forward of the whole, padded image) or ``sliding`` (overlapping ``eval_crop``
            windows every ``eval_stride`` pixels, logits averaged; :func:`polypool.inference.sliding_window_logits`).
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        pretrained: bool = False,
        weights: Optional[str] = None,
        network_weights: Optional[str] = None,
        pooling: ModelPooling = "max",
        pooling_kwargs: Optional[dict[str, Any]] = None,
        head: Head = "auto",
        num_classes: int = 21,
        ignore_index: int = IGNORE_INDEX,
        class_names: Optional[Sequence[str]] = None,
        output_stride: int = 8,
        lr: float = 1e-3,
        optimizer: Optimizer = "sgd",
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        poly_power: float = 0.9,
        head_lr_mult: float = 10.0,
        bias_lr_mult: float = 1.0,
        decay_norm_and_bias: bool = False,
        batchnorm: BatchNormPolicy = "train",
        pooling_lr_mult: float = 1.0,
        alpha_conv_lr_mult: float = 1.0,
        alpha_prelu_lr_mult: float = 1.0,
        alpha_bias_lr_mult: float = 1.0,
        alpha_grad_scale: float = 1.0,
        tta_flip: bool = False,
        tta_scales: Sequence[float] = (1.0,),
        eval_mode: EvalMode = "whole",
        eval_crop: Optional[tuple[int, int]] = None,
        eval_stride: Optional[tuple[int, int]] = None,
        swap_input_size: tuple[int, int, int] = (3, 128, 128),
    ):  # pragma: no mutate block (save_hyperparameters reads the arguments from a frame named __init__)
        super().__init__()
        self.save_hyperparameters()
        if pooling not in get_args(ModelPooling):
            raise ValueError(f"unknown pooling {pooling!r}; valid names: {', '.join(get_args(ModelPooling))}")
        if eval_mode not in get_args(EvalMode):
            raise ValueError(f"eval_mode must be one of {get_args(EvalMode)}, got {eval_mode!r}")
        if eval_mode == "sliding":
            if eval_crop is None or eval_stride is None:
                raise ValueError("eval_mode='sliding' needs eval_crop=(height, width) and eval_stride=(height, width)")
            if not all(0 < s <= c for s, c in zip(eval_stride, eval_crop)):
                raise ValueError(f"need 0 < eval_stride <= eval_crop, got {eval_stride} and {eval_crop}")
        if not tta_scales or not all(scale > 0 for scale in tta_scales):
            # checked here: evaluation would fail only after training (the quick preset validates only at the end)
            raise ValueError(
                f"tta_scales must be one or more input scales > 0 (1.0 = no rescaling), got {list(tta_scales)}"
            )
        if optimizer not in get_args(Optimizer):
            raise ValueError(f"optimizer must be one of {get_args(Optimizer)}, got {optimizer!r}")
        if batchnorm not in get_args(BatchNormPolicy):
            raise ValueError(f"batchnorm must be one of {get_args(BatchNormPolicy)}, got {batchnorm!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.class_names = (
            list(class_names)
            if class_names is not None
            else (list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else [f"class_{i}" for i in range(num_classes)])
        )
        self.network = build_network(backbone, num_classes, head, output_stride, pretrained, weights)
        if network_weights is not None:
            load_network_weights(self.network, network_weights)
        if pooling_kwargs is None:
            pooling_kwargs = dict(PAPER_POOLING_KWARGS.get(pooling, {}))
        if pooling == "ppool" and alpha_grad_scale != 1.0:
            pooling_kwargs = {**pooling_kwargs, "alpha_grad_scale": alpha_grad_scale}
        # "max" swaps nothing (the report still lists every site); "max_all" is the registry's max at every site.
        choice = {"max": None, "avg": None} if pooling == "max" else ("max" if pooling == "max_all" else pooling)
        self.swap_report: SwapReport = swap_pooling(
            self.network.backbone, choice, input_size=swap_input_size, **pooling_kwargs
        )
        if batchnorm == "frozen":
            for module in self.frozen_norm_layers():
                module.eval()
                for param in module.parameters():
                    param.requires_grad_(False)
        self.loss = nn.CrossEntropyLoss(ignore_index=ignore_index)
        # The benchmark mIoU: a dataset-level confusion matrix (reduced over DDP ranks), absent classes NaN.
        self.val_iou = MulticlassJaccardIndex(
            num_classes, average=None, ignore_index=ignore_index, validate_args=False, zero_division=float("nan")
        )
        self.last_val_iou: Optional[Tensor] = None

    @property
    def input_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The input normalisation the backbone's weights expect (timm's pretrained config of ``backbone``, e.g.
        0.5/0.5 for inception_v3's ``tv_in1k``); ImageNet's for a backbone without one."""
        return backbone_mean_std(self.hparams.backbone)

    def frozen_norm_layers(self) -> list[nn.Module]:
        """The backbone's BatchNorm layers when ``batchnorm="frozen"`` (else none)."""
        if self.hparams.batchnorm != "frozen":
            return []
        return [m for m in self.network.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    @override
    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_norm_layers():  # frozen statistics: eval mode even while training
            module.eval()
        return self

    @override
    def forward(self, images: Tensor) -> Tensor:
        return self.network(images)

    # -- training and evaluation -------------------------------------------------------------------------------
    @override
    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, masks = batch
        loss = self.loss(self(images), masks)
        self.log(keys.TRAIN_LOSS, loss, prog_bar=True)
        return loss

    @override
    def validation_step(self, batch, batch_idx: int) -> None:
        images, masks = batch[:2]  # (images, masks, sizes): pad_collate's padded batch
        logits = self(images)
        self.log(keys.VAL_LOSS, self.loss(logits, masks), sync_dist=True)
        self.val_iou.update(self.evaluation_prediction(images, logits), masks)  # the padding is 255: ignored
        if batch_idx == 0 and self._wandb_runs():
            self._log_dense_alpha_maps(images)

    @override
    def on_validation_epoch_end(self) -> None:
        per_class = self.val_iou.compute()
        self.val_iou.reset()
        self.last_val_iou = per_class.detach().cpu()
        self.log(keys.VAL_MIOU, torch.nanmean(per_class), prog_bar=True, sync_dist=False)
        for name, iou in zip(self.class_names, per_class):
            self.log(keys.class_iou(keys.VAL, name), iou)
        self.log_pooling_parameters()

    def log_pooling_parameters(self) -> None:
        """Mean/min/max alpha of every P-pooling layer (histograms too, with a W&B logger)."""
        for key, value in self.alpha_scalars().items():
            self.log(key, value)
        self.log_alpha_histograms()

    def alpha_scalars(self) -> dict[str, float]:
        """``{alpha/<layer>/mean|min|max: value}`` of every P-pooling layer (a dense alpha's: of the last forward;
        NaN values, a dense alpha before its first forward, are left out)."""
        values = {}
        for name, module in self.network.backbone.named_modules():
            if isinstance(module, PPool2d):
                stats = module.alpha_stats()
                values.update(
                    {keys.alpha_stat(name, key): stats[key] for key in keys.ALPHA_STATS if not math.isnan(stats[key])}
                )
        return values

    def log_alpha_histograms(self) -> None:
        """W&B histograms of every channel-mode P-pooling layer's per-channel alpha (``alpha/<layer>/hist``)."""
        for name, module in self.network.backbone.named_modules():
            if isinstance(module, PPool2d):
                self._log_histogram(keys.alpha_hist(name), module.alpha_stats().get("per_channel"), module.alpha_range)

    def _wandb_runs(self) -> list:
        """The W&B runs among the loggers (histograms and images go there; CSV keeps the scalars); none without a
        trainer (``self.loggers`` is then empty)."""
        return [logger.experiment for logger in self.loggers if isinstance(logger, WandbLogger)]

    def _log_histogram(self, key: str, values: Optional[Tensor], value_range: tuple[float, float]) -> None:
        """A W&B histogram of ``values`` over the fixed ``value_range`` (:func:`alpha_histogram`)."""
        if values is None:
            return
        counts, edges = alpha_histogram(values, value_range)
        for run in self._wandb_runs():
            import wandb

            run.log({key: wandb.Histogram(np_histogram=(counts, edges)), keys.STEP: self.global_step})

    @torch.no_grad()
    def dense_alpha_maps(self, images: Tensor) -> dict[str, Tensor]:
        """The alpha map ``(C, H_out, W_out)`` of every dense P-pooling layer, for the first image of ``images``."""
        captured: dict[str, Tensor] = {}
        hooks = [
            module.register_forward_hook(
                lambda mod, inputs, output, name=name: captured.__setitem__(
                    name, mod.current_alpha(inputs[0][:1])[0].detach().float().cpu()
                )
            )
            for name, module in self.network.backbone.named_modules()
            if isinstance(module, PPool2d) and module.alpha_mode == "dense"
        ]
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

            for name, alpha in maps.items():  # the channel mean, the alpha range scaled to grey levels 0..255
                low, high = self.network.backbone.get_submodule(name).alpha_range
                scaled = ((alpha.mean(0) - low) / max(high - low, 1e-6)).clamp(0, 1)
                # wandb.Image casts arrays to uint8 without scaling: a [0, 1] float map would be all black
                image = (scaled * 255).round().to(torch.uint8).numpy()
                run.log(
                    {
                        keys.alpha_map(name): wandb.Image(
                            image, caption=f"mean alpha over channels, {low:g} black to {high:g} white"
                        ),
                        keys.STEP: self.global_step,
                    }
                )

    def uses_tta(self) -> bool:
        """Whether evaluation differs from one plain forward of the whole image."""
        return (
            bool(self.hparams.tta_flip) or tuple(self.hparams.tta_scales) != (1.0,) or self.hparams.eval_mode != "whole"
        )

    def view_logits(self, images: Tensor) -> Tensor:
        """Logits of one view under ``eval_mode``."""
        if self.hparams.eval_mode == "sliding":
            return sliding_window_logits(
                self, images, self.hparams.num_classes, tuple(self.hparams.eval_crop), tuple(self.hparams.eval_stride)
            )
        return self(images)

    def evaluation_prediction(self, images: Tensor, logits: Optional[Tensor] = None) -> Tensor:
        """Class maps under the configured test-time protocol (``tta_flip``/``tta_scales``; none: one forward of
        the whole image). ``logits``: the plain forward's output, if already computed."""
        if self.uses_tta():
            return self.predict_logits(images).argmax(1)
        return (self(images) if logits is None else logits).argmax(1)

    @override
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class maps ``(N, H, W)`` at the input resolution, averaging logits over ``tta_scales`` and flips."""
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_logits(images).argmax(1)

    def predict_logits(self, images: Tensor) -> Tensor:
        size = images.shape[-2:]
        total = 0.0
        for scale in self.hparams.tta_scales:
            scaled = (
                images
                if scale == 1
                else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
            )
            views = [scaled, scaled.flip(-1)] if self.hparams.tta_flip else [scaled]
            for i, view in enumerate(views):
                logits = self.view_logits(view)
                logits = logits.flip(-1) if i == 1 else logits
                total = total + F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
        return total

    # -- optimisation -------------------------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """SGD parameter groups, one per (part, kind) that has parameters, each named ``part/kind``.

        Parts: ``backbone`` (x1; VGG's fc6/fc7 belong to it, they come from ImageNet's fc layers), ``head`` (the new
        layers, x ``head_lr_mult``), ``pooling`` (learned poolings, x ``pooling_lr_mult``), and the dense alpha
        branch's ``alpha_conv`` / ``alpha_prelu`` / ``alpha_bias`` (x their multipliers). Kinds: ``weight`` (weight
        decay), ``bias`` (x ``bias_lr_mult``) and ``norm`` (BatchNorm's); biases and norm parameters get no weight
        decay unless ``decay_norm_and_bias``, and pooling and alpha-branch parameters other than ``alpha_conv``'s
        never do. Frozen parameters (``requires_grad=False``) are left out.
        """
        hp = self.hparams
        part_of: dict[int, str] = {}
        for module in self.network.backbone.modules():
            branch = getattr(module, "alpha_branch", None) if isinstance(module, PPool2d) else None
            if branch is not None:
                part_of.update(
                    {
                        id(branch.conv.weight): "alpha_conv",
                        id(branch.proj.weight): "alpha_conv",
                        id(branch.act.weight): "alpha_prelu",
                        id(branch.proj.bias): "alpha_bias",
                    }
                )
        for _, param in pooling_parameters(self.network.backbone):
            part_of.setdefault(id(param), "pooling")
        head = self.network.head
        new = head.new_modules() if hasattr(head, "new_modules") else [head]
        for module in new:
            for param in module.parameters():
                part_of[id(param)] = "head"
        norm_params = {id(p) for m in self.network.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()}
        lr_mult = {
            "backbone": 1.0,
            "head": hp.head_lr_mult,
            "pooling": hp.pooling_lr_mult,
            "alpha_conv": hp.alpha_conv_lr_mult,
            "alpha_prelu": hp.alpha_prelu_lr_mult,
            "alpha_bias": hp.alpha_bias_lr_mult,
        }
        groups: dict[str, dict] = {}
        for name, param in self.network.named_parameters():
            if not param.requires_grad:
                continue
            part = part_of.get(id(param), "backbone")
            kind = "norm" if id(param) in norm_params else ("bias" if name.endswith("bias") else "weight")
            if part in ("pooling", "alpha_prelu", "alpha_bias"):
                decay = 0.0
            else:  # alpha_conv's parameters are all weights, so they decay like the backbone's
                decay = hp.weight_decay if kind == "weight" or hp.decay_norm_and_bias else 0.0
            lr = hp.lr * lr_mult[part] * (hp.bias_lr_mult if kind == "bias" and part in ("backbone", "head") else 1.0)
            key = f"{part}/{kind}"
            group = groups.setdefault(key, {"name": key, "params": [], "lr": lr, "weight_decay": decay})
            group["params"].append(param)
        order = list(lr_mult)
        return sorted(groups.values(), key=lambda g: (order.index(g["name"].split("/")[0]), g["name"]))

    @override
    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(self.parameter_groups(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                self.parameter_groups(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
            )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        # lr * (1 - step / total) ** poly_power, DeepLab's "poly"; torch's own scheduler (picklable, for ddp_spawn)
        schedule = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def alpha_histogram(values: Tensor, value_range: tuple[float, float], bins: int = 64):
    """``np.histogram`` of ``values`` over the fixed ``value_range``, so every step's histogram has the same bins;
    an empty range (a fixed alpha) gets the bins of ``[low, low + 1]``."""
    import numpy as np

    low, high = value_range
    return np.histogram(values.numpy(), bins=bins, range=(low, high if high > low else low + 1.0))


def load_network_weights(network: torch.nn.Module, path: str) -> None:
    """Load a trained segmentation network into ``network`` (before any pooling swap): from a Lightning
    checkpoint of :class:`SegmentationModel` (its ``network.*`` entries) or a plain ``network`` state dict. Every
    parameter and buffer must match in name and shape."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"network_weights file {file} does not exist: pass a checkpoint of a polypool "
            f"SegmentationModel (.ckpt) or a state dict of its network"
        )
    state = torch.load(file, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = {k.removeprefix("network."): v for k, v in state["state_dict"].items() if k.startswith("network.")}
    expected = network.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"network_weights {file} does not fit this network (backbone, head and num_classes must be "
            f"the ones it was trained with; load it before swapping the pooling): missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    network.load_state_dict(state)
