"""DeepLab v2 on ResNet-101 (configs/voc/resnet101_deeplabv2.yaml) against DeepLab v2's prototxt (issue 29, section 5).

The prototxt's layer table is data below, with the repository, path and commit it was read from. The tests check our
network block by block, count the parameters, compare the feature-map sizes at 321, 504 and 513 with Caffe's
rounding, and build an independent network from the table (convolutions and frozen BatchNorm written out here), copy
our weights into it and compare the logits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polypool.models import SegmentationModel

DEEPLAB_V2_RESNET101 = {
    "repository": "DrSleep/tensorflow-deeplab-resnet",
    "path": "misc/deploy.prototxt (DeepLab v2's ResNet-101 deploy prototxt; deeplab_resnet/model.py, its port, agrees)",
    "commit": "32d66d4f41e669c96c5f29016672de3648819423 (model.py: ce75c97fc1337a676e32214ba74865e55adc362c)",
    "stem": {"conv1": (7, 2, 3, 64), "pool1": ("max", 3, 2, 1)},  # (kernel, stride, pad, out) / (kind, k, s, p)
    "rounding": "ceil",  # Caffe's pooling (BVLC/caffe pooling_layer.cpp @ 032384455635928a63ff0325a73e56d4f625c71d)
    # (name, blocks, planes, stride of the stage's first block, dilation of branch2b in EVERY block)
    "stages": [("res2", 3, 64, 1, 1), ("res3", 4, 128, 2, 1), ("res4", 23, 256, 1, 2), ("res5", 3, 512, 1, 4)],
    "stride_on": "branch2a",  # MSRA's Caffe ResNet: the 1x1 carries the stride (res3a_branch2a, res3a_branch1)
    "conv_bias": False,  # every backbone conv: bias_term false
    "batchnorm": "use_global_stats true, BatchNorm and Scale lr_mult 0: frozen",
    "aspp": {"rates": (6, 12, 18, 24), "kernel": 3, "out": 21, "combine": "sum"},  # fc1_voc12_c0..c3, Eltwise SUM
    "sizes": {321: [161, 81, 41], 504: [252, 127, 64], 513: [257, 129, 65]},  # after conv1, pool1, res3 (then 8x)
}
# What we build differently, on purpose: timm's torchvision ImageNet weights (resnet101.tv_in1k) are ResNet v1.5,
# trained with the stride on the 3x3 (branch2b); DeepLab v2 started from MSRA's Caffe ResNet-101 (stride on the
# 1x1), which timm does not have. The reference network below takes that one difference, and nothing else.
DELIBERATE = {"stride_on": "branch2b"}


def make_ours() -> nn.Module:
    model = SegmentationModel(
        backbone="resnet101", head="aspp", output_stride=8, pooling="max", pretrained=False, batchnorm="frozen"
    )
    network = model.network.eval()
    torch.manual_seed(0)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so that frozen BN is checked
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return network


def blocks(network):
    resnet = network.backbone.features
    return [getattr(resnet, f"layer{i}") for i in range(1, 5)]


def test_every_block_is_dilated_as_the_prototxt():
    network = make_ours()
    resnet = network.backbone.features
    k, s, p, out = DEEPLAB_V2_RESNET101["stem"]["conv1"]
    conv1 = resnet.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.out_channels, conv1.bias) == (
        (k, k),
        (s, s),
        (p, p),
        out,
        None,
    )
    _, k, s, p = DEEPLAB_V2_RESNET101["stem"]["pool1"]
    assert (resnet.maxpool.kernel_size, resnet.maxpool.stride, resnet.maxpool.padding) == (k, s, p)
    assert resnet.maxpool.ceil_mode == (DEEPLAB_V2_RESNET101["rounding"] == "ceil")
    for layer, (name, count, planes, stride, dilation) in zip(blocks(network), DEEPLAB_V2_RESNET101["stages"]):
        assert len(layer) == count, name
        for i, block in enumerate(layer):
            where = f"{name}{'abcdefghijklmnopqrstuvw'[i] if count <= 3 else ('a' if i == 0 else f'b{i}')}"
            assert block.conv1.out_channels == planes and block.conv3.out_channels == 4 * planes, where
            assert block.conv2.dilation == (dilation, dilation) and block.conv2.padding == (dilation, dilation), where
            first_stride = stride if i == 0 else 1
            on = {"branch2a": block.conv1, "branch2b": block.conv2}
            assert on[DELIBERATE["stride_on"]].stride == (first_stride, first_stride), where
            assert all(c.bias is None for c in (block.conv1, block.conv2, block.conv3)), where
    aspp = DEEPLAB_V2_RESNET101["aspp"]
    assert [b.dilation for b in network.head.branches] == [(r, r) for r in aspp["rates"]]
    assert all(b.kernel_size == (3, 3) and b.out_channels == aspp["out"] for b in network.head.branches)


@pytest.mark.parametrize("size", [321, 504, 513])
def test_feature_map_sizes_equal_caffes(size):
    def caffe_pool(n, k, s, p):
        out = math.ceil((n + 2 * p - k) / s) + 1
        return out - 1 if p > 0 and (out - 1) * s >= n + p else out

    k, s, p, _ = DEEPLAB_V2_RESNET101["stem"]["conv1"]
    after_conv1 = (size + 2 * p - k) // s + 1
    after_pool1 = caffe_pool(after_conv1, *DEEPLAB_V2_RESNET101["stem"]["pool1"][1:])
    after_res3 = (after_pool1 - 1) // 2 + 1  # res3a's 1x1, stride 2, no padding
    assert [after_conv1, after_pool1, after_res3] == DEEPLAB_V2_RESNET101["sizes"][size]
    network = make_ours()
    resnet = network.backbone.features
    seen = []
    for module in (resnet.act1, resnet.maxpool, resnet.layer2):
        module.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        out = network.backbone(torch.zeros(1, 3, 33, size))
    assert seen == DEEPLAB_V2_RESNET101["sizes"][size]
    assert out.shape[-1] == after_res3  # res4 and res5 keep the size: dilated, not strided


def frozen_bn(x, bn):
    return (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) * bn.weight[
        :, None, None
    ] + bn.bias[:, None, None]


def reference_logits(network, x):
    """The prototxt's network, written out from the table with our weights (the one deliberate difference: the stride
    on the 3x3); BatchNorm with its stored statistics (use_global_stats)."""
    resnet = network.backbone.features
    k, s, p, _ = DEEPLAB_V2_RESNET101["stem"]["conv1"]
    x = F.relu(frozen_bn(F.conv2d(x, resnet.conv1.weight, None, s, p), resnet.bn1))
    _, k, s, p = DEEPLAB_V2_RESNET101["stem"]["pool1"]
    out = [math.ceil((n + 2 * p - k) / s) + 1 for n in x.shape[-2:]]
    out = [o - 1 if (o - 1) * s >= n + p else o for o, n in zip(out, x.shape[-2:])]
    extra = [(o - 1) * s + k - n - p for o, n in zip(out, x.shape[-2:])]
    x = F.max_pool2d(F.pad(x, (p, max(extra[1], 0), p, max(extra[0], 0)), value=-math.inf), k, s)
    for layer, (_, _count, _, stride, dilation) in zip(blocks(network), DEEPLAB_V2_RESNET101["stages"]):
        for i, block in enumerate(layer):
            s = stride if i == 0 else 1
            shortcut = x
            if block.downsample is not None:
                shortcut = frozen_bn(F.conv2d(x, block.downsample[0].weight, None, s), block.downsample[1])
            y = F.relu(frozen_bn(F.conv2d(x, block.conv1.weight), block.bn1))
            y = F.relu(frozen_bn(F.conv2d(y, block.conv2.weight, None, s, dilation, dilation), block.bn2))
            y = frozen_bn(F.conv2d(y, block.conv3.weight), block.bn3)
            x = F.relu(y + shortcut)
    rates = DEEPLAB_V2_RESNET101["aspp"]["rates"]
    return sum(F.conv2d(x, b.weight, b.bias, 1, r, r) for b, r in zip(network.head.branches, rates))


@pytest.mark.parametrize("size", [(65, 65), (64, 72)])
def test_our_weights_in_the_prototxts_network_give_our_logits(size):
    network = make_ours()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        ours, theirs = network.head(network.backbone(x)), reference_logits(network, x)
    # 100 random layers deep the logits reach hundreds: float32 rounding, relative to their scale
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-4 * theirs.abs().max()


def test_the_parameter_count_is_resnet101s_and_four_aspp_classifiers():
    network = make_ours()
    backbone = sum(p.numel() for p in network.backbone.parameters())
    # ResNet-101 without its fc: 44,549,160 - (2048 x 1000 + 1000); each ASPP branch 3 x 3 x 2048 x 21 + 21
    assert backbone == 44_549_160 - 2_049_000
    assert sum(p.numel() for p in network.head.parameters()) == 4 * (9 * 2048 * 21 + 21)
