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


def build_vgg16_largefov(pretrained: bool = False, **timm_kwargs) -> nn.Sequential:
    """timm's ``vgg16.features`` at output stride 8, as DeepLab-LargeFOV has it (before any pooling swap).

    timm's VGG asserts output_stride 32, so the restructuring is done here on its module tree: the five
    ``MaxPool2d`` become 3x3 windows (stride 2, 2, 2, 1, 1, padding 1) and conv5_1-3 get dilation 2.
    """
    vgg = timm.create_model("vgg16", pretrained=pretrained, **timm_kwargs)
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
