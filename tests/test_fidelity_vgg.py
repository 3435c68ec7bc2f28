"""The two VGG16 networks against the references they cite (issue 29): the authors' VGG16_20M as their PyTorch code
builds it, and DeepLab-LargeFOV as its Caffe prototxt defines it.

Each reference's layer table is data below, with the repository, path and commit it was read from. The tests check
our network against the table layer by layer, count the parameters, compare the feature-map size after every
pooling at 321, 504 and 513 with the reference's own rounding rule, and build an independent network from the table
(plain convolutions and pools written here, not our classes), copy our weights into it in table order and compare
the logits.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polypool.models import SegmentationModel

# -- the references, as data --------------------------------------------------------------------------------------
# (name, type, kernel, stride, pad, dilation, out channels); types: conv (followed by ReLU unless it is the
# classifier), max / ave (pooling), dropout (kind, p).


def vgg_convs(conv5_dilation: int) -> list[tuple]:
    rows, pools = [], iter(["pool1", "pool2", "pool3", "pool4", "pool5"])
    for stage, (channels, count) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        for i in range(1, count + 1):
            d = conv5_dilation if stage == 5 else 1
            rows.append((f"conv{stage}_{i}", "conv", 3, 1, d, d, channels))
        rows.append(next(pools))
    return rows


VGG16_20M = {
    "repository": "kfxw/mydev-pytorch-semantic-segmentation",
    "path": "networks/VGGModels.py (VGG16_20M); networks/ModelBuilder.py (C0Bilinear, the classifier)",
    "commit": "582b55a5606e8f489f3ff0c8425479569bec4c13 (VGGModels.py, unchanged at HEAD aa307c116150ce8a0de522ae7859fe"
    "d383763e75); 09ded0e3f82ebd37a3c6948233754d9d004588ba (ModelBuilder.py)",
    "rounding": "floor",  # nn.MaxPool2d's default ceil_mode=False
    "pools": {
        "pool1": ("max", 2, 2, 1),
        "pool2": ("max", 2, 2, 1),
        "pool3": ("max", 2, 2, 1),
        "pool4": ("max", 2, 1, 0),
        "pool5": ("max", 3, 1, 1),
    },
    "head": [
        ("fc6", "conv", 3, 1, 1, 1, 1024),
        ("drop6", "dropout", "channel", 0.5),
        ("fc7", "conv", 1, 1, 0, 1, 1024),
        ("drop7", "dropout", "channel", 0.5),
        ("classifier", "conv", 1, 1, 0, 1, 21),
    ],
    "parameters": 20_505_429,  # conv weights and biases through fc7 (20,483,904) and the 1024 -> 21 classifier
    # the feature map after each pooling, for inputs of 321, 504 and 513
    "sizes": {321: [161, 81, 41, 40, 40], 504: [253, 127, 64, 63, 63], 513: [257, 129, 65, 64, 64]},
}
LARGEFOV = {
    "repository": "corenel/deeplab-public",
    "path": "exper/voc12/config/deeplab_largeFOV/train.prototxt and test.prototxt",
    "commit": "ad566e9a4d3b1c4ea8a23cf8f2f4430c57f65e43",
    "rounding": "ceil",  # Caffe: ceil((H + 2p - k) / s) + 1, less one where the last window starts in the padding
    "rounding_source": "BVLC/caffe src/caffe/layers/pooling_layer.cpp @ 032384455635928a63ff0325a73e56d4f625c71d",
    "pools": {
        "pool1": ("max", 3, 2, 1),
        "pool2": ("max", 3, 2, 1),
        "pool3": ("max", 3, 2, 1),
        "pool4": ("max", 3, 1, 1),
        "pool5": ("max", 3, 1, 1),
        "pool5a": ("ave", 3, 1, 1),
    },
    "head": [
        ("fc6", "conv", 3, 1, 12, 12, 1024),
        ("drop6", "dropout", "element", 0.5),
        ("fc7", "conv", 1, 1, 0, 1, 1024),
        ("drop7", "dropout", "element", 0.5),
        ("fc8_voc12", "conv", 1, 1, 0, 1, 21),
    ],
    "parameters": 20_505_429,
    "sizes": {321: [161, 81, 41, 41, 41, 41], 504: [253, 127, 64, 64, 64, 64], 513: [257, 129, 65, 65, 65, 65]},
}


def table(reference: dict) -> list[tuple]:
    """The reference's layers in order: the VGG16 convs with its pools (conv5 dilated 2 in both), then the head."""
    rows = []
    for row in vgg_convs(conv5_dilation=2):
        if isinstance(row, str):
            kind, k, s, p = reference["pools"][row]
            rows.append((row, kind, k, s, p))
            if row == "pool5" and "pool5a" in reference["pools"]:
                rows.append(("pool5a", *reference["pools"]["pool5a"]))
        else:
            rows.append(row)
    return rows + reference["head"]


def pooled_size(size: int, k: int, s: int, p: int, rounding: str) -> int:
    """The reference's output size rule: PyTorch's floor, or Caffe's ceil with its padding rule."""
    if rounding == "floor":
        return (size + 2 * p - k) // s + 1
    out = math.ceil((size + 2 * p - k) / s) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def reference_sizes(reference: dict, size: int) -> list[int]:
    sizes = []
    for row in table(reference):
        if row[1] == "conv":
            _, _, k, s, p, d, _ = row
            size = (size + 2 * p - d * (k - 1) - 1) // s + 1
        elif row[1] in ("max", "ave"):
            size = pooled_size(size, *row[2:5], reference["rounding"])
            sizes.append(size)
    return sizes


class ReferenceNetwork(nn.Module):
    """A network made from a layer table alone: convolutions, ReLUs and pools written out here (Caffe's rounding by
    explicit padding), in eval mode (dropout is the identity)."""

    def __init__(self, reference: dict):
        super().__init__()
        self.rows, self.rounding = table(reference), reference["rounding"]
        self.convs = nn.ModuleList()
        channels = 3
        for row in self.rows:
            if row[1] == "conv":
                _, _, k, s, p, d, out = row
                self.convs.append(nn.Conv2d(channels, out, k, s, p, d))
                channels = out

    def forward(self, x):
        convs = iter(self.convs)
        for row in self.rows:
            if row[1] == "conv":
                x = next(convs)(x)
                if row[0] not in ("classifier", "fc8_voc12"):
                    x = F.relu(x)
            elif row[1] in ("max", "ave"):
                kind, k, s, p = row[1:5]
                out = [pooled_size(n, k, s, p, self.rounding) for n in x.shape[-2:]]
                # pad to p before and to whatever the last window needs after, then pool without padding
                extra = [(o - 1) * s + k - n - p for o, n in zip(out, x.shape[-2:])]
                if kind == "max":
                    x = F.max_pool2d(F.pad(x, (p, max(extra[1], 0), p, max(extra[0], 0)), value=-math.inf), k, s)
                else:  # Caffe's AVE: the zero padding counts (stride 1: no window runs past it)
                    assert s == 1 and extra == [p, p]
                    x = F.avg_pool2d(F.pad(x, (p, p, p, p)), k, s)
        return x


def our_network(head: str) -> nn.Module:
    return SegmentationModel(backbone="vgg16", head=head, pooling="max", pretrained=False).network.eval()


CASES = [("vgg16_20m", VGG16_20M), ("largefov", LARGEFOV)]


@pytest.mark.parametrize("head,reference", CASES, ids=[c[0] for c in CASES])
def test_every_layer_equals_the_references(head, reference):
    network = our_network(head)
    layers = [m for m in network.backbone if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))]
    head_module = network.head
    layers += [head_module.fc6, head_module.drop, head_module.fc7, head_module.drop, head_module.classifier]
    rows = table(reference)
    assert len(layers) == len(rows)
    for layer, row in zip(layers, rows):
        if row[1] == "conv":
            _, _, k, s, p, d, out = row
            assert (
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                layer.out_channels,
                layer.groups,
            ) == ((k, k), (s, s), (p, p), (d, d), out, 1), (row, layer)
        elif row[1] in ("max", "ave"):
            kind, k, s, p = row[1:5]
            assert isinstance(layer, nn.MaxPool2d if kind == "max" else nn.AvgPool2d), (row, layer)
            assert (layer.kernel_size, layer.stride, layer.padding) in ((k, s, p), ((k, k), (s, s), (p, p))), row
            assert layer.ceil_mode == (reference["rounding"] == "ceil"), row
            if kind == "ave":
                assert layer.count_include_pad, row
        else:
            _, _, kind, p = row
            assert type(layer) is {"channel": nn.Dropout2d, "element": nn.Dropout}[kind] and layer.p == p, row


@pytest.mark.parametrize("head,reference", CASES, ids=[c[0] for c in CASES])
def test_parameter_count_equals_the_references(head, reference):
    network = our_network(head)
    assert sum(p.numel() for p in network.parameters()) == reference["parameters"]
    assert sum(p.numel() for p in ReferenceNetwork(reference).parameters()) == reference["parameters"]


@pytest.mark.parametrize("head,reference", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("size", [321, 504, 513])
def test_feature_map_sizes_equal_the_references_rounding(head, reference, size):
    assert reference_sizes(reference, size) == reference["sizes"][size]  # the data agree with the rule
    network = our_network(head)
    seen = []
    for module in network.backbone:
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            module.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        network.backbone(torch.zeros(1, 3, 9, size))  # the width goes through every pool; the height stays small
    assert seen == reference["sizes"][size]


@pytest.mark.parametrize("head,reference", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("size", [(65, 65), (64, 72)])
def test_our_weights_in_the_references_network_give_our_logits(head, reference, size):
    torch.manual_seed(0)
    network = our_network(head)
    ours = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    built = ReferenceNetwork(reference).eval()
    assert len(ours) == len(built.convs)
    with torch.no_grad():
        for mine, theirs in zip(ours, built.convs):
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
        x = torch.randn(1, 3, *size)
        logits = network.head(network.backbone(x))
        torch.testing.assert_close(logits, built(x), rtol=1e-4, atol=1e-5)


def test_the_max_row_keeps_pool5a_as_an_average_pool_and_every_swap_swaps_it():
    kept = SegmentationModel(backbone="vgg16", head="largefov", pooling="max")
    assert isinstance(kept.network.backbone[-1], nn.AvgPool2d)
    swapped = SegmentationModel(backbone="vgg16", head="largefov", pooling="ppool")
    assert [s.name for s in swapped.swap_report.swapped][-1] == str(len(swapped.network.backbone) - 1)
    assert len(swapped.swap_report.swapped) == 6
    assert type(swapped.network.backbone[-1]).__name__ == "PPool2d"
