"""configs/voc/resnet.yaml's network equals the authors' ResNet-50 and DeepLabv3 decoder, layer by layer.

The reference is the DATA below, read from the authors' code (kfxw/mydev-pytorch-semantic-segmentation):

* encoder: networks/resnet.py @ 4e5bf6c7af7097141e66d4c2e178ab0232eeaf5d (``ResNet(Bottleneck, [3, 4, 6, 3],
  overall_stride=16)``; CSAIL's deep stem; layer4 = one block at stride 1, dilation 1 plus three multigrid blocks at
  dilations [1, 2, 4] x 2);
* decoder: networks/ModelBuilder.py @ 27b6e5eac5e53cefcb6fbdb5e9c6ee47dba91855 (``DeeplabV3ASPPBilinear``, fc_dim
  2048, rates (6, 12, 18), ``Dropout2d(p=0.5)`` in cat_projection: commented out later, in
  c1d4aaa284a2be41ae0e4a16f7f8a14d0fc9d4af);
* the solver config that picks them: deeplabv3_resnet_solver_cfg.py @ 27b6e5eac5e53cefcb6fbdb5e9c6ee47dba91855;
* the ImageNet file's key layout: CSAILVision/semantic-segmentation-pytorch models/resnet.py @
  192f5c9e1de2ca5367dc26a3f5b63688cabb1c50 (layer4 of 3 blocks, fc 1000 x 2048).

The equal-logits test runs an independent interpreter of this table (the reference's forward rules written out
below), not our classes, with our weights copied in table order.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from polypool.models import SegmentationModel, build_network

REPO = Path(__file__).resolve().parents[1]
SOURCES = {
    "encoder": "kfxw/mydev-pytorch-semantic-segmentation networks/resnet.py @ 4e5bf6c7af7097141e66d4c2e178ab0232eeaf5d",
    "decoder": "kfxw/mydev-pytorch-semantic-segmentation networks/ModelBuilder.py @ "
    "27b6e5eac5e53cefcb6fbdb5e9c6ee47dba91855",
    "solver": "kfxw/mydev-pytorch-semantic-segmentation deeplabv3_resnet_solver_cfg.py @ "
    "27b6e5eac5e53cefcb6fbdb5e9c6ee47dba91855",
    "weights": "CSAILVision/semantic-segmentation-pytorch models/resnet.py @ 192f5c9e1de2ca5367dc26a3f5b63688cabb1c50",
}
URL = "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/resnet50-imagenet.pth"
NUM_CLASSES = 21

# ---- the reference's layers ---------------------------------------------------------------------------------------
# One row per conv / pool layer, in the reference's construction order. For a conv: the BatchNorm that follows it
# (``bn``; eps 1e-5, momentum 0.001: their SynchronizedBatchNorm2d) and whether a ReLU follows that (``relu``; a
# Bottleneck's conv3 and downsample are added first, then ReLU). adaptive_avgpool: ``kernel`` is its output size.
FIELDS = (
    "name",
    "type",
    "kernel",
    "stride",
    "padding",
    "dilation",
    "in_channels",
    "out_channels",
    "groups",
    "bn",
    "relu",
    "bias",
)
ENCODER_ROWS = [  # networks/resnet.py @ 4e5bf6c, overall_stride=16
    ("conv1", "conv", 3, 2, 1, 1, 3, 64, 1, "bn1", True, False),
    ("conv2", "conv", 3, 1, 1, 1, 64, 64, 1, "bn2", True, False),
    ("conv3", "conv", 3, 1, 1, 1, 64, 128, 1, "bn3", True, False),
    ("maxpool", "maxpool", 3, 2, 1, 1, 128, 128, 1, None, False, False),  # nn.MaxPool2d(3, 2, padding=1), floor
    ("layer1.0.conv1", "conv", 1, 1, 0, 1, 128, 64, 1, "layer1.0.bn1", True, False),
    ("layer1.0.conv2", "conv", 3, 1, 1, 1, 64, 64, 1, "layer1.0.bn2", True, False),
    ("layer1.0.conv3", "conv", 1, 1, 0, 1, 64, 256, 1, "layer1.0.bn3", False, False),
    ("layer1.0.downsample.0", "conv", 1, 1, 0, 1, 128, 256, 1, "layer1.0.downsample.1", False, False),
    ("layer1.1.conv1", "conv", 1, 1, 0, 1, 256, 64, 1, "layer1.1.bn1", True, False),
    ("layer1.1.conv2", "conv", 3, 1, 1, 1, 64, 64, 1, "layer1.1.bn2", True, False),
    ("layer1.1.conv3", "conv", 1, 1, 0, 1, 64, 256, 1, "layer1.1.bn3", False, False),
    ("layer1.2.conv1", "conv", 1, 1, 0, 1, 256, 64, 1, "layer1.2.bn1", True, False),
    ("layer1.2.conv2", "conv", 3, 1, 1, 1, 64, 64, 1, "layer1.2.bn2", True, False),
    ("layer1.2.conv3", "conv", 1, 1, 0, 1, 64, 256, 1, "layer1.2.bn3", False, False),
    ("layer2.0.conv1", "conv", 1, 1, 0, 1, 256, 128, 1, "layer2.0.bn1", True, False),
    ("layer2.0.conv2", "conv", 3, 2, 1, 1, 128, 128, 1, "layer2.0.bn2", True, False),
    ("layer2.0.conv3", "conv", 1, 1, 0, 1, 128, 512, 1, "layer2.0.bn3", False, False),
    ("layer2.0.downsample.0", "conv", 1, 2, 0, 1, 256, 512, 1, "layer2.0.downsample.1", False, False),
    ("layer2.1.conv1", "conv", 1, 1, 0, 1, 512, 128, 1, "layer2.1.bn1", True, False),
    ("layer2.1.conv2", "conv", 3, 1, 1, 1, 128, 128, 1, "layer2.1.bn2", True, False),
    ("layer2.1.conv3", "conv", 1, 1, 0, 1, 128, 512, 1, "layer2.1.bn3", False, False),
    ("layer2.2.conv1", "conv", 1, 1, 0, 1, 512, 128, 1, "layer2.2.bn1", True, False),
    ("layer2.2.conv2", "conv", 3, 1, 1, 1, 128, 128, 1, "layer2.2.bn2", True, False),
    ("layer2.2.conv3", "conv", 1, 1, 0, 1, 128, 512, 1, "layer2.2.bn3", False, False),
    ("layer2.3.conv1", "conv", 1, 1, 0, 1, 512, 128, 1, "layer2.3.bn1", True, False),
    ("layer2.3.conv2", "conv", 3, 1, 1, 1, 128, 128, 1, "layer2.3.bn2", True, False),
    ("layer2.3.conv3", "conv", 1, 1, 0, 1, 128, 512, 1, "layer2.3.bn3", False, False),
    ("layer3.0.conv1", "conv", 1, 1, 0, 1, 512, 256, 1, "layer3.0.bn1", True, False),
    ("layer3.0.conv2", "conv", 3, 2, 1, 1, 256, 256, 1, "layer3.0.bn2", True, False),
    ("layer3.0.conv3", "conv", 1, 1, 0, 1, 256, 1024, 1, "layer3.0.bn3", False, False),
    ("layer3.0.downsample.0", "conv", 1, 2, 0, 1, 512, 1024, 1, "layer3.0.downsample.1", False, False),
    ("layer3.1.conv1", "conv", 1, 1, 0, 1, 1024, 256, 1, "layer3.1.bn1", True, False),
    ("layer3.1.conv2", "conv", 3, 1, 1, 1, 256, 256, 1, "layer3.1.bn2", True, False),
    ("layer3.1.conv3", "conv", 1, 1, 0, 1, 256, 1024, 1, "layer3.1.bn3", False, False),
    ("layer3.2.conv1", "conv", 1, 1, 0, 1, 1024, 256, 1, "layer3.2.bn1", True, False),
    ("layer3.2.conv2", "conv", 3, 1, 1, 1, 256, 256, 1, "layer3.2.bn2", True, False),
    ("layer3.2.conv3", "conv", 1, 1, 0, 1, 256, 1024, 1, "layer3.2.bn3", False, False),
    ("layer3.3.conv1", "conv", 1, 1, 0, 1, 1024, 256, 1, "layer3.3.bn1", True, False),
    ("layer3.3.conv2", "conv", 3, 1, 1, 1, 256, 256, 1, "layer3.3.bn2", True, False),
    ("layer3.3.conv3", "conv", 1, 1, 0, 1, 256, 1024, 1, "layer3.3.bn3", False, False),
    ("layer3.4.conv1", "conv", 1, 1, 0, 1, 1024, 256, 1, "layer3.4.bn1", True, False),
    ("layer3.4.conv2", "conv", 3, 1, 1, 1, 256, 256, 1, "layer3.4.bn2", True, False),
    ("layer3.4.conv3", "conv", 1, 1, 0, 1, 256, 1024, 1, "layer3.4.bn3", False, False),
    ("layer3.5.conv1", "conv", 1, 1, 0, 1, 1024, 256, 1, "layer3.5.bn1", True, False),
    ("layer3.5.conv2", "conv", 3, 1, 1, 1, 256, 256, 1, "layer3.5.bn2", True, False),
    ("layer3.5.conv3", "conv", 1, 1, 0, 1, 256, 1024, 1, "layer3.5.bn3", False, False),
    # layer4: block(inplanes, 512, stride=1, downsample) with dilation 1, then multigrid dilations 2, 4, 8
    ("layer4.0.conv1", "conv", 1, 1, 0, 1, 1024, 512, 1, "layer4.0.bn1", True, False),
    ("layer4.0.conv2", "conv", 3, 1, 1, 1, 512, 512, 1, "layer4.0.bn2", True, False),
    ("layer4.0.conv3", "conv", 1, 1, 0, 1, 512, 2048, 1, "layer4.0.bn3", False, False),
    ("layer4.0.downsample.0", "conv", 1, 1, 0, 1, 1024, 2048, 1, "layer4.0.downsample.1", False, False),
    ("layer4.1.conv1", "conv", 1, 1, 0, 1, 2048, 512, 1, "layer4.1.bn1", True, False),
    ("layer4.1.conv2", "conv", 3, 1, 2, 2, 512, 512, 1, "layer4.1.bn2", True, False),
    ("layer4.1.conv3", "conv", 1, 1, 0, 1, 512, 2048, 1, "layer4.1.bn3", False, False),
    ("layer4.2.conv1", "conv", 1, 1, 0, 1, 2048, 512, 1, "layer4.2.bn1", True, False),
    ("layer4.2.conv2", "conv", 3, 1, 4, 4, 512, 512, 1, "layer4.2.bn2", True, False),
    ("layer4.2.conv3", "conv", 1, 1, 0, 1, 512, 2048, 1, "layer4.2.bn3", False, False),
    ("layer4.3.conv1", "conv", 1, 1, 0, 1, 2048, 512, 1, "layer4.3.bn1", True, False),
    ("layer4.3.conv2", "conv", 3, 1, 8, 8, 512, 512, 1, "layer4.3.bn2", True, False),
    ("layer4.3.conv3", "conv", 1, 1, 0, 1, 512, 2048, 1, "layer4.3.bn3", False, False),
]
DECODER_ROWS = [  # networks/ModelBuilder.py @ 27b6e5e, DeeplabV3ASPPBilinear(num_class=21, fc_dim=2048)
    ("aspp0.0", "conv", 1, 1, 0, 1, 2048, 256, 1, "aspp0.1", True, False),
    ("aspp1.0", "conv", 3, 1, 6, 6, 2048, 2048, 2048, "aspp1.1", True, False),  # depthwise
    ("aspp1.3", "conv", 1, 1, 0, 1, 2048, 256, 1, "aspp1.4", True, False),
    ("aspp2.0", "conv", 3, 1, 12, 12, 2048, 2048, 2048, "aspp2.1", True, False),
    ("aspp2.3", "conv", 1, 1, 0, 1, 2048, 256, 1, "aspp2.4", True, False),
    ("aspp3.0", "conv", 3, 1, 18, 18, 2048, 2048, 2048, "aspp3.1", True, False),
    ("aspp3.3", "conv", 1, 1, 0, 1, 2048, 256, 1, "aspp3.4", True, False),
    ("gap.0", "adaptive_avgpool", 1, None, None, None, 2048, 2048, 1, None, False, False),
    ("gap.1", "conv", 1, 1, 0, 1, 2048, 256, 1, "gap.2", True, False),
    ("cat_projection.0", "conv", 1, 1, 0, 1, 1280, 308, 1, "cat_projection.1", True, False),
    {
        "name": "cat_projection.3",
        "type": "dropout",
        "dropout": "Dropout2d",
        "p": 0.5,
        "in_channels": 308,
        "out_channels": 308,
    },  # at 27b6e5e; "#nn.Dropout2d(p=0.5)" from c1d4aaa on
    ("decoder_projection.0", "conv", 3, 1, 1, 1, 308, 308, 308, "decoder_projection.1", True, False),
    ("decoder_projection.3", "conv", 1, 1, 0, 1, 308, 256, 1, "decoder_projection.4", True, False),
    ("decoder_projection.6", "conv", 3, 1, 1, 1, 256, 256, 256, "decoder_projection.7", True, False),
    ("decoder_projection.9", "conv", 1, 1, 0, 1, 256, 256, 1, "decoder_projection.10", True, False),
    ("decoder_projection.12", "conv", 1, 1, 0, 1, 256, NUM_CLASSES, 1, None, False, True),  # the classifier
]
CONCAT_ORDER = ("gap", "aspp0", "aspp1", "aspp2", "aspp3")  # their forward: torch.cat([aspp_ave, aspp0, ...])
BN_EPS, BN_MOMENTUM = 1e-5, 0.001  # their SynchronizedBatchNorm2d's defaults (lib/nn/modules/batchnorm.py @ 27b6e5e)


def as_dicts(rows):
    return [row if isinstance(row, dict) else dict(zip(FIELDS, row)) for row in rows]


ENCODER, DECODER = as_dicts(ENCODER_ROWS), as_dicts(DECODER_ROWS)

# Parameters (conv weights and biases, BatchNorm gamma and beta; no fc): stem = conv1-3 and bn1-3.
PART_PARAMS = {
    "stem": 112_832,
    "layer1": 236_288,
    "layer2": 1_219_584,
    "layer3": 7_098_368,
    "layer4": 19_427_328,
    "decoder": 3_243_449,
}
ENCODER_PARAMS = 28_094_400  # with ResNet-50's 3-block layer4 it would be 23,631,808
# Feature-map side at each stage for square inputs, from the reference's rules: conv out = floor((H + 2p - d(k - 1)
# - 1) / s) + 1, max pooling the same (floor, ceil_mode False). stem = after conv3, the decoder's logits = layer4's.
STAGE_SIZES = {
    321: {"stem": 161, "maxpool": 81, "layer1": 81, "layer2": 41, "layer3": 21, "layer4": 21},
    504: {"stem": 252, "maxpool": 126, "layer1": 126, "layer2": 63, "layer3": 32, "layer4": 32},
    513: {"stem": 257, "maxpool": 129, "layer1": 129, "layer2": 65, "layer3": 33, "layer4": 33},
}


# ---- helpers ------------------------------------------------------------------------------------------------------
def build(**kwargs):
    return build_network("resnet50_authors", NUM_CLASSES, head="deeplabv3_authors", output_stride=16, **kwargs)


def ours(name, network):
    """The module of ``network`` that the reference's ``name`` is (encoder names under backbone, decoder's under
    head)."""
    part = "backbone" if any(name == row["name"] or name == row.get("bn") for row in ENCODER) else "head"
    return network.get_submodule(f"{part}.{name}")


def part_of(name):
    if name.startswith("layer"):
        return name.split(".")[0]
    return "stem" if name in ("conv1", "conv2", "conv3", "bn1", "bn2", "bn3", "maxpool") else "decoder"


def row_params(row):
    if row["type"] != "conv":
        return 0
    weight = row["out_channels"] * row["in_channels"] // row["groups"] * row["kernel"] ** 2
    return weight + (row["out_channels"] if row["bias"] else 0) + (2 * row["out_channels"] if row["bn"] else 0)


def out_size(size, row):
    k, s, p, d = row["kernel"], row["stride"], row["padding"], row["dilation"]
    return math.floor((size + 2 * p - d * (k - 1) - 1) / s) + 1


def blocks():
    """The encoder's residual blocks in order: prefix -> (main-path rows, shortcut rows)."""
    found: dict[str, tuple[list, list]] = {}
    for row in ENCODER:
        if row["name"].startswith("layer"):
            prefix = ".".join(row["name"].split(".")[:2])
            main, shortcut = found.setdefault(prefix, ([], []))
            (shortcut if ".downsample." in row["name"] else main).append(row)
    return found


# ---- (a) the modules equal the table ------------------------------------------------------------------------------
def test_the_modules_equal_the_reference_table():
    network = build()
    rows = {row["name"]: row for row in ENCODER + DECODER}
    layer_types = (nn.Conv2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.modules.dropout._DropoutNd, nn.Dropout)
    seen, bns = [], []
    for _prefix, part in (("backbone", network.backbone), ("head", network.head)):
        for name, module in part.named_modules():
            if isinstance(module, layer_types):
                seen.append(name)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                bns.append(name)
    assert seen == [row["name"] for row in ENCODER + DECODER]  # the same layers, in the same order
    assert sorted(bns) == sorted(row["bn"] for row in ENCODER + DECODER if row.get("bn"))
    for name, row in rows.items():
        module = ours(name, network)
        if row["type"] == "conv":
            assert type(module) is nn.Conv2d, name
            got = (
                module.kernel_size,
                module.stride,
                module.padding,
                module.dilation,
                module.in_channels,
                module.out_channels,
                module.groups,
                module.bias is not None,
            )
            want = (
                (row["kernel"],) * 2,
                (row["stride"],) * 2,
                (row["padding"],) * 2,
                (row["dilation"],) * 2,
                row["in_channels"],
                row["out_channels"],
                row["groups"],
                row["bias"],
            )
            assert got == want, name
            bn = ours(row["bn"], network) if row["bn"] else None
            if bn is not None:
                assert type(bn) is nn.BatchNorm2d and bn.num_features == row["out_channels"], row["bn"]
                assert (bn.eps, bn.momentum, bn.affine) == (BN_EPS, BN_MOMENTUM, True), row["bn"]
        elif row["type"] == "maxpool":
            assert type(module) is nn.MaxPool2d, name
            assert (module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode) == (
                row["kernel"],
                row["stride"],
                row["padding"],
                row["dilation"],
                False,
            )
        elif row["type"] == "adaptive_avgpool":
            assert type(module) is nn.AdaptiveAvgPool2d and module.output_size == row["kernel"], name
        else:
            assert type(module).__name__ == row["dropout"] and module.p == row["p"], name
    assert network.backbone.out_channels == 2048


# ---- (b) parameter counts -----------------------------------------------------------------------------------------
def test_parameter_counts_equal_the_reference():
    network = build()
    counts = dict.fromkeys(PART_PARAMS, 0)
    for name, param in network.backbone.named_parameters():
        counts[part_of(name.split(".weight")[0].split(".bias")[0])] += param.numel()
    counts["decoder"] = sum(p.numel() for p in network.head.parameters())
    assert counts == PART_PARAMS
    assert sum(p.numel() for p in network.backbone.parameters()) == ENCODER_PARAMS
    from_table = dict.fromkeys(PART_PARAMS, 0)  # the table itself gives the same numbers
    for row in ENCODER + DECODER:
        from_table[part_of(row["name"])] += row_params(row)
    assert from_table == PART_PARAMS


# ---- (c) feature-map sizes ----------------------------------------------------------------------------------------
def sizes_from_the_table(size):
    stages = {}
    for row in ENCODER[:4]:
        size = out_size(size, row)
        stages["stem" if row["type"] == "conv" else "maxpool"] = size
    for prefix, (main, _) in blocks().items():
        for row in main:
            size = out_size(size, row)
        stages[prefix.split(".")[0]] = size
    return stages


@pytest.mark.parametrize("size", sorted(STAGE_SIZES))
def test_feature_map_sizes_equal_the_reference(size):
    assert sizes_from_the_table(size) == STAGE_SIZES[size]
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        network = build().eval()
    found = {}
    names = {
        "relu3": "stem",
        "maxpool": "maxpool",
        "layer1": "layer1",
        "layer2": "layer2",
        "layer3": "layer3",
        "layer4": "layer4",
    }
    for name, stage in names.items():
        network.backbone.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, stage=stage: found.__setitem__(stage, tuple(output.shape[-2:]))
        )
    head_out = []
    network.head.register_forward_hook(lambda module, inputs, output: head_out.append(tuple(output.shape)))
    logits = network(torch.empty(1, 3, size, size, device="meta"))
    assert found == {stage: (side, side) for stage, side in STAGE_SIZES[size].items()}
    side = STAGE_SIZES[size]["layer4"]
    assert head_out == [(1, NUM_CLASSES, side, side)] and tuple(logits.shape) == (1, NUM_CLASSES, size, size)


# ---- (d) equal logits: an independent interpreter of the table ----------------------------------------------------
class ReferenceNetwork:
    """The reference's forward rules on the table's layers, with its own tensors (filled from ours in table order).

    Rules (their code): stem = conv-BN-ReLU x 3, then max pooling; a Bottleneck = its main path with ReLU after bn1 and
    bn2, plus the downsample (conv-BN) or the input, then ReLU; the decoder's five branches on layer4's map, gap's
    1x1 map upsampled bilinearly (align_corners=False), concatenated in CONCAT_ORDER, cat_projection (its Dropout2d
    does nothing in eval), decoder_projection; logits upsampled bilinearly to the input size."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def copy_from(self, network):
        for row in ENCODER + DECODER:  # table order
            if row["type"] != "conv":
                continue
            conv = ours(row["name"], network)
            self.tensors[row["name"] + ".weight"] = conv.weight.detach().clone()
            if row["bias"]:
                self.tensors[row["name"] + ".bias"] = conv.bias.detach().clone()
            if row["bn"]:
                bn = ours(row["bn"], network)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    self.tensors[f"{row['bn']}.{key}"] = getattr(bn, key).detach().clone()

    def layer(self, row, x):
        if row["type"] == "maxpool":
            return F.max_pool2d(x, row["kernel"], row["stride"], row["padding"], row["dilation"], ceil_mode=False)
        if row["type"] == "adaptive_avgpool":
            return x.mean(dim=(2, 3), keepdim=True)
        if row["type"] == "dropout":
            return x  # eval mode
        x = F.conv2d(
            x,
            self.tensors[row["name"] + ".weight"],
            self.tensors.get(row["name"] + ".bias"),
            row["stride"],
            row["padding"],
            row["dilation"],
            row["groups"],
        )
        if row["bn"]:
            t = {
                key: self.tensors[f"{row['bn']}.{key}"][None, :, None, None]
                for key in ("weight", "bias", "running_mean", "running_var")
            }
            x = (x - t["running_mean"]) / torch.sqrt(t["running_var"] + BN_EPS) * t["weight"] + t["bias"]
        return torch.relu(x) if row["relu"] else x

    def path(self, rows, x):
        for row in rows:
            x = self.layer(row, x)
        return x

    def __call__(self, image):
        x = self.path(ENCODER[:4], image)
        for main, shortcut in blocks().values():
            x = torch.relu(self.path(main, x) + (self.path(shortcut, x) if shortcut else x))
        branches = {
            name: self.path([r for r in DECODER if r["name"].split(".")[0] == name], x) for name in CONCAT_ORDER
        }
        branches["gap"] = F.interpolate(branches["gap"], size=x.shape[-2:], mode="bilinear", align_corners=False)
        y = torch.cat([branches[name] for name in CONCAT_ORDER], dim=1)
        y = self.path([r for r in DECODER if r["name"].startswith(("cat_projection", "decoder_projection"))], y)
        return F.interpolate(y, size=image.shape[-2:], mode="bilinear", align_corners=False)


def test_logits_equal_the_reference_interpreter():
    torch.manual_seed(0)
    # float64: the two compute BatchNorm differently (F.batch_norm vs the formula), and float32 rounding grows to
    # ~1e-3 over 70 layers; the comparison is about structure, so it is done where rounding is ~1e-12
    network = build().double()
    with torch.no_grad():  # BatchNorm with non-trivial affine parameters and statistics of a real forward pass
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.momentum = 1.0
        network.head.decoder_projection[12].bias.normal_(0, 0.1)
        images = torch.rand(4, 3, 65, 65, dtype=torch.float64)
        network.train()
        network.head.cat_projection[3].eval()  # no dropout in the statistics (a channel dropped in all 4: var 0)
        network(images)  # running statistics = these images' (the gap branch's too), so values stay O(1)
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM
    network.eval()
    reference = ReferenceNetwork()
    reference.copy_from(network)
    image = images[:1]
    with torch.no_grad():
        got, want = network(image), reference(image)
    assert got.shape == want.shape == (1, NUM_CLASSES, 65, 65)
    assert 1e-3 < want.std() < 1e3  # neither a constant map nor blown up
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


# ---- (e) CSAIL's ImageNet weights ----------------------------------------------------------------------------------
def csail_state_dict(seed=0):
    """Random tensors in the key layout of CSAIL's resnet50-imagenet.pth: the encoder's rows without layer4.3 (their
    ResNet-50 has 3 layer4 blocks), and the 1000-class fc."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for row in ENCODER:
        if row["type"] != "conv" or row["name"].startswith("layer4.3."):
            continue
        shape = (row["out_channels"], row["in_channels"] // row["groups"], row["kernel"], row["kernel"])
        state[row["name"] + ".weight"] = torch.randn(shape, generator=generator)
        for key in ("weight", "bias", "running_mean"):
            state[f"{row['bn']}.{key}"] = torch.randn(row["out_channels"], generator=generator)
        state[f"{row['bn']}.running_var"] = torch.rand(row["out_channels"], generator=generator) + 0.5
    state["fc.weight"] = torch.randn(1000, 2048, generator=generator)
    state["fc.bias"] = torch.randn(1000, generator=generator)
    return state


def test_a_local_weights_file_loads_as_the_authors_load_it(tmp_path):
    state = csail_state_dict()
    file = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, file)
    model = SegmentationModel(
        backbone="resnet50_authors", head="deeplabv3_authors", output_stride=16, weights=str(file)
    )  # --model.weights FILE
    encoder = model.network.backbone
    for key in ("conv2.weight", "bn1.running_var", "layer4.2.conv2.weight", "layer4.0.downsample.0.weight"):
        assert torch.equal(encoder.state_dict()[key], state[key]), key
    assert encoder.layer4[0].conv2.stride == (1, 1)  # the stride-2 ImageNet block, loaded into a stride-1 one
    fresh = encoder.layer4[3]  # not in the file: the authors' init (kaiming_normal_, BatchNorm 1 and 1e-4)
    assert torch.all(fresh.bn1.weight == 1) and torch.allclose(fresh.bn3.bias, torch.full((2048,), 1e-4))
    assert abs(float(fresh.conv2.weight.detach().std()) - math.sqrt(2 / (512 * 9))) < 2e-3
    report = encoder.weights_report
    assert report.missing == sorted(
        k for k in encoder.state_dict() if k.startswith("layer4.3.") and not k.endswith("num_batches_tracked")
    )
    assert report.unexpected == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize(
    "change,named",
    [
        ("extra", "layer1.0.conv9.weight"),
        ("shape", "conv2.weight"),
        ("missing", "layer2.1.bn2.running_var"),
        ("four_blocks", "layer4.3.conv1.weight"),
    ],
)
def test_a_wrong_weights_file_does_not_load_silently(tmp_path, change, named):
    state = csail_state_dict()
    if change == "extra" or change == "shape":
        state[named] = torch.zeros(64, 64, 1, 1)
    elif change == "missing":
        del state[named]
    else:
        state[named] = torch.zeros(512, 2048, 1, 1)
    file = tmp_path / "resnet50-imagenet.pth"
    torch.save(state, file)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build(weights=str(file))


def test_pretrained_without_network_names_the_url_and_the_local_file_option(tmp_path, monkeypatch):
    for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(key, "http://127.0.0.1:9")
    for key in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError) as error:
        build(pretrained=True)
    message = str(error.value)
    assert URL in message and "--model.weights FILE" in message
    assert str(tmp_path / "hub" / "checkpoints") in message


# ---- (f) the config builds this network ---------------------------------------------------------------------------
def test_the_resnet_config_is_the_authors_network_and_solver():
    config = yaml.safe_load((REPO / "configs" / "voc" / "resnet.yaml").read_text())
    model, data = config["model"], config["data"]["init_args"]
    assert (model["backbone"], model["head"], model["output_stride"]) == ("resnet50_authors", "deeplabv3_authors", 16)
    assert (data["crop_size"], data["batch_size"], data["scale_range"], data["hflip"]) == (504, 24, [0.5, 2.0], True)
    assert config["trainer"]["max_steps"] == 46 * 661 == 30406
    assert model["lr"] == pytest.approx(1e-7 * 504**2, rel=1e-3)
    network = SegmentationModel(**{**model, "pretrained": False}).eval()
    assert type(network.network.backbone).__name__ == "AuthorsResNet"
    assert type(network.network.head).__name__ == "DeeplabV3ASPPBilinear"
    with torch.no_grad():
        assert network(torch.rand(1, 3, 65, 65)).shape == (1, NUM_CLASSES, 65, 65)


def test_the_deeplabv3_config_keeps_the_torchvision_resnet_and_cites_every_value():
    config = yaml.safe_load((REPO / "configs" / "voc" / "resnet_deeplabv3.yaml").read_text())
    assert (config["model"]["backbone"], config["model"]["head"]) == ("resnet50.tv_in1k", "aspp_v3")
    assert config["trainer"]["default_root_dir"] == "results/logs/voc/resnet_deeplabv3"
    text = (REPO / "configs" / "voc" / "resnet_deeplabv3.yaml").read_text()
    assert "Chen et al. 2017" in text and "# AC" not in text
    values = [
        line
        for line in text.splitlines()
        if ":" in line
        and not line.strip().startswith("#")
        and not line.rstrip().endswith(":")
        and "class_path" not in line
        and "seed_everything" not in line
    ]
    exempt = ("num_workers", "root", "val_split", "default_root_dir", "val_check_interval", "check_val_every_n_epoch")
    assert [line for line in values if "#" not in line and not line.strip().startswith(exempt)] == []


# ---- pooling surgery, normalisation, errors -----------------------------------------------------------------------
def test_the_stem_maxpool_is_the_one_pooling_site_and_ppool_replaces_it():
    from polypool.pooling import PPool2d

    model = SegmentationModel(
        backbone="resnet50_authors", head="deeplabv3_authors", output_stride=16, pretrained=False, pooling="ppool"
    )
    report = model.swap_report
    assert [site.name for site in report.local_sites] == ["maxpool"] and len(report.swapped) == 1
    assert report.swapped[0].channels == 128 and report.swapped[0].after_relu
    assert isinstance(model.network.backbone.maxpool, PPool2d)
    assert model.input_mean_std == ((0.48108, 0.45753, 0.40787), (0.5, 0.5, 0.5))  # VOCDataset_newstyle.py @ c31dcf9
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 65, 65)).shape == (1, NUM_CLASSES, 65, 65)


def test_output_stride_8_dilates_layer3_as_their_code():
    with torch.device("meta"):
        network = build_network("resnet50_authors", NUM_CLASSES, head="auto", output_stride=8)
    layer3 = network.backbone.layer3
    assert [(b.conv2.stride, b.conv2.dilation) for b in layer3] == [((1, 1), (1, 1))] + [((1, 1), (2, 2))] * 5
    assert [b.conv2.dilation for b in network.backbone.layer4] == [(1, 1), (2, 2), (4, 4), (8, 8)]


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="deeplabv3_authors"):
        build_network("resnet50_authors", NUM_CLASSES, head="aspp_v3", output_stride=16)
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet50_authorz'.*close names: \['resnet50_authors'"):
        build_network("resnet50_authorz", NUM_CLASSES, head="deeplabv3_authors", output_stride=16)
    with pytest.raises(ValueError, match="unknown backbone 'resnet50_authorz'"):
        build_network("resnet50_authorz", NUM_CLASSES, head="aspp_v3", output_stride=16)
    with pytest.raises(ValueError, match="output stride 8, 16 or 32"):
        build_network("resnet50_authors", NUM_CLASSES, head="deeplabv3_authors", output_stride=4)
    with pytest.raises(FileNotFoundError, match="resnet50-imagenet.pth"):
        build_network("resnet50_authors", NUM_CLASSES, weights="/nonexistent/file.pth")


def test_prefetch_knows_where_the_authors_weights_come_from(tmp_path, monkeypatch):
    """reproduce.sh --prefetch / --offline look for CSAIL's file in torch hub's cache, where the model loads it."""
    from polypool.models.authors_resnet import AUTHORS_RESNET50_URL
    from polypool.repro.preflight import weight_needs

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    [need] = weight_needs({"model": {"backbone": "resnet50_authors", "pretrained": True}})
    assert (need.source, need.location) == ("url", AUTHORS_RESNET50_URL)
    assert need.looked_in() == [tmp_path / "hub" / "checkpoints" / "resnet50-imagenet.pth"]
    assert need.cached() is None
