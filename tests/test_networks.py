"""The DeepLab networks' structure: strides, dilations, and the pooling sites P-pooling replaces."""

import torch
from torch import nn

from polypool.models import ASPP, LargeFOVHead, build_vgg16_largefov
from polypool.pooling import PPool2d
from polypool.surgery import swap_pooling


def test_vgg16_largefov_has_output_stride_8_and_six_swappable_pools():
    features = build_vgg16_largefov()
    pools = [m for m in features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 3 + [(3, 1, 1)] * 2
    assert isinstance(features[-1], nn.AvgPool2d)  # pool5a
    dilated = [m.dilation for m in features if isinstance(m, nn.Conv2d)]
    assert dilated == [(1, 1)] * 10 + [(2, 2)] * 3
    x = torch.rand(1, 3, 65, 81)
    assert features(x).shape == (1, 512, 9, 11)  # ceil(65/8), ceil(81/8)
    report = swap_pooling(features, "ppool", input_size=(3, 64, 64))
    assert len(report.swapped) == 6 and sum(isinstance(m, PPool2d) for m in features) == 6
    head = LargeFOVHead(512, 21)
    assert head(features(x)).shape == (1, 21, 9, 11)
    assert head.fc6.dilation == (12, 12) and head.fc6.out_channels == 1024


def test_aspp_sums_four_dilated_branches():
    aspp = ASPP(16, 5)
    assert [b.dilation for b in aspp.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x = torch.rand(2, 16, 9, 9)
    torch.testing.assert_close(aspp(x), sum(b(x) for b in aspp.branches))
