"""DeepLab-style segmentation networks on timm backbones, with the pooling layers left for ``swap_pooling``.

* VGG16-LargeFOV (DeepLab v1; the paper's Table 1): timm's ``vgg16.features`` restructured to output stride 8 --
  pool1-3 become 3x3/2 pad 1, pool4 and pool5 3x3/1 pad 1, conv5 is dilated x2 -- then fc6 (3x3, dilation 12,
  1024 channels), fc7 (1x1, 1024) and a 1x1 classifier (:class:`LargeFOVHead`).
* ASPP (DeepLab v2): parallel 3x3 classifiers with dilations 6/12/18/24, summed; the head of the ResNet and
  Inception networks.
"""

from __future__ import annotations

from typing import Sequence

import timm
import torch
from torch import Tensor, nn

VGG16_POOL_INDICES = (4, 9, 16, 23, 30)  # positions of pool1..pool5 in timm's vgg16.features
VGG16_CONV5_INDICES = (24, 26, 28)


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV's fc6 (3x3, dilation 12), fc7 (1x1), with ReLU and dropout, and the 1x1 classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 1024, dilation: int = 12,
                 dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc6(x)))
        x = self.drop(self.act(self.fc7(x)))
        return self.classifier(x)


class ASPP(nn.Module):
    """DeepLab v2's atrous spatial pyramid pooling: one 3x3 classifier per dilation rate, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


def build_vgg16_largefov(pretrained: bool = False, weights: str | None = None) -> nn.Sequential:
    """timm's ``vgg16.features`` at output stride 8, as DeepLab-LargeFOV has it (before any pooling swap)."""
    return build_vgg16_largefov_from(create_timm_model("vgg16", pretrained, weights))


def build_vgg16_largefov_from(vgg: nn.Module) -> nn.Sequential:
    """Restructure a timm ``vgg16``'s features in place and return them.

    timm's VGG asserts output_stride 32, so the restructuring is done here on its module tree: the five
    ``MaxPool2d`` become 3x3 windows (stride 2, 2, 2, 1, 1, padding 1) and conv5_1-3 get dilation 2. The
    classifier (fc6/fc7 as 7x7/1x1 convs of 4096 channels) is dropped: LargeFOV's fc6/fc7 are new layers.
    """
    features = vgg.features
    for index, stride in zip(VGG16_POOL_INDICES, (2, 2, 2, 1, 1)):
        if not isinstance(features[index], nn.MaxPool2d):
            raise RuntimeError(f"timm's vgg16.features[{index}] is {type(features[index]).__name__}, expected "
                               f"MaxPool2d: this timm version changed the VGG layout")
        features[index] = nn.MaxPool2d(3, stride, 1)
    for index in VGG16_CONV5_INDICES:
        conv = features[index]
        conv.dilation, conv.padding = (2, 2), (2, 2)
    return features


class LastFeatureMap(nn.Module):
    """A timm ``features_only`` model that returns its deepest feature map instead of a list."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.out_channels = features.feature_info.channels()[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[-1]


def create_timm_model(name: str, pretrained: bool = False, weights: str | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` with the errors a user can act on: an unknown name lists close names; pretrained
    weights that cannot be downloaded (no network) say how to pass a local file instead; ``weights`` is a local
    file timm loads through ``pretrained_cfg_overlay=dict(file=...)``."""
    from pathlib import Path

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:10]
        raise ValueError(f"unknown timm backbone {name!r}; close names: {close}")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist: pass the path of a timm checkpoint or "
                                    f"state dict (.pth, .bin or .safetensors) for {name!r}")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as error:  # noqa: BLE001 - hub, HTTP, socket and offline-mode errors all end up here
        if not pretrained or weights is not None:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for timm model {name!r} ({type(error).__name__}: {error}). Without "
            f"network, download the weights where you have it (e.g. timm.create_model({name!r}, pretrained=True) "
            f"and torch.save(model.state_dict(), 'weights.pth')), then pass the file: weights='weights.pth' "
            f"(--model.weights on the command line), which timm loads with "
            f"pretrained_cfg_overlay=dict(file='weights.pth')") from error


class SegmentationNetwork(nn.Module):
    """``backbone`` (image -> feature map) and ``head`` (feature map -> logits), upsampled bilinearly to the
    input size."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.backbone(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_network(backbone: str, num_classes: int, head: str = "auto", output_stride: int = 8,
                  pretrained: bool = False, weights: str | None = None) -> SegmentationNetwork:
    """The paper's networks: ``vgg16`` -> DeepLab-LargeFOV; a timm ResNet -> dilated ResNet (``output_stride``)
    with ASPP; ``inception_v3`` (and other timm backbones) -> their deepest features with ASPP.

    ``head="auto"`` picks LargeFOV for vgg16 and ASPP otherwise.
    """
    if backbone == "vgg16":
        if output_stride != 8:
            raise ValueError(f"VGG16-LargeFOV has output stride 8 (got output_stride={output_stride})")
        vgg = create_timm_model("vgg16", pretrained, weights)
        features = build_vgg16_largefov_from(vgg)
        in_channels = 512
    else:
        kwargs = {"features_only": True, "out_indices": (-1,)}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        try:
            features = LastFeatureMap(create_timm_model(backbone, pretrained, weights, **kwargs))
        except TypeError as error:
            raise ValueError(f"timm backbone {backbone!r} cannot be built with output_stride={output_stride} "
                             f"({error}); use output_stride=32 for it") from error
        in_channels = features.out_channels
    head = ("largefov" if backbone == "vgg16" else "aspp") if head == "auto" else head
    if head == "largefov":
        head_module: nn.Module = LargeFOVHead(in_channels, num_classes)
    elif head == "aspp":
        head_module = ASPP(in_channels, num_classes)
    else:
        raise ValueError(f"head must be 'auto', 'largefov' or 'aspp', got {head!r}")
    return SegmentationNetwork(features, head_module)
