"""DeepLab-style segmentation networks on timm backbones, with the pooling layers left for ``swap_pooling``.

Two VGG16 layouts (docs/paper_notes.md, "The authors' training configurations"), both on timm's ``vgg16.features``
restructured to output stride 8, with conv5 dilated x2:

* ``vgg16_20m``, the authors' VGG16 (DeepLab's "VGG16_20M" initialisation model, as their PyTorch code builds it,
  ``networks/VGGModels.py``): pool1-3 2x2/2 pad 1, pool4 2x2/1, pool5 3x3/1 pad 1, PyTorch's floor rounding; fc6 3x3
  **dilation 1**, 1024 channels; fc7 1x1, 1024; channel dropout (``nn.Dropout2d``) after fc6 and fc7.
* ``largefov``, DeepLab-LargeFOV (DeepLab v1's prototxt): pool1-3 3x3/2 pad 1, pool4-5 3x3/1 pad 1, then pool5a, a
  3x3/1 pad 1 average pool; Caffe's rounding up of pooling output sizes (``ceil_mode``); fc6 3x3 dilation 12;
  element-wise dropout (Caffe's) after fc6 and fc7.

Both heads end in a 1x1 classifier (:class:`VGGHead`); with ImageNet weights, fc6/fc7 start from timm's
``pre_logits`` subsampled as DeepLab did (:func:`init_vgg_head_from_imagenet`), so only the classifier is new.

Two ASPP heads: DeepLab v2's (parallel 3x3 classifiers at rates 6/12/18/24, summed; :class:`ASPP`) and DeepLabv3's
(1x1 and three 3x3 branches at 6/12/18 plus image pooling, 256 channels with BatchNorm, a 1x1 projection and a 1x1
classifier; :class:`ASPPv3`).
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import Tensor, nn

VGG16_BACKBONES = ("vgg16", "vgg16_bn")  # timm's VGG16, and with BatchNorm (the CPU miniature trains it from scratch)
# (kernel, stride, padding) of pool1..pool5 in each VGG16 layout (tests/test_fidelity_vgg.py holds the references)
VGG16_POOLS = {
    "vgg16_20m": ((2, 2, 1), (2, 2, 1), (2, 2, 1), (2, 1, 0), (3, 1, 1)),
    "largefov": ((3, 2, 1), (3, 2, 1), (3, 2, 1), (3, 1, 1), (3, 1, 1)),
}
VGG16_FC6_DILATION = {"vgg16_20m": 1, "largefov": 12}
VGG16_CEIL_MODE = {"vgg16_20m": False, "largefov": True}  # the authors' PyTorch rounds down, Caffe's pooling up
VGG16_POOL5A = {"vgg16_20m": False, "largefov": True}  # LargeFOV's 3x3/1 pad 1 average pool after pool5
VGG16_CHANNEL_DROPOUT = {"vgg16_20m": True, "largefov": False}  # nn.Dropout2d (authors) / Caffe's element-wise
# deeplabv3_authors: the authors' DeepLabv3 decoder (models/authors_resnet.py), on backbone resnet50_authors (their
# encoder; AUTHORS_BACKBONES) or on any timm backbone
HEADS = ("auto", "vgg16_20m", "largefov", "aspp", "aspp_v3", "deeplabv3_authors")
AUTHORS_BACKBONES = ("resnet50_authors",)  # not timm models: built by polypool.models.authors_resnet


class VGGHead(nn.Module):
    """fc6 (3x3, ``dilation``), fc7 (1x1), each with ReLU and dropout, and the new 1x1 classifier. Dropout drops
    single values (``nn.Dropout``, as DeepLab's Caffe dropout layers) or, with ``channel_dropout``, whole channels
    (``nn.Dropout2d``, as the authors' ``VGGModels.py``). fc6/fc7 are VGG16's fully connected layers as
    convolutions: with ImageNet weights they start from them (:func:`init_vgg_head_from_imagenet`)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 1024,
        dilation: int = 12,
        dropout: float = 0.5,
        channel_dropout: bool = False,
    ):
        super().__init__()
        self.fc6 = nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(dropout) if channel_dropout else nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def new_modules(self) -> list[nn.Module]:
        """The layers that never come from ImageNet weights (they get the head's learning rate)."""
        return [self.classifier]

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.fc6(x)))
        x = self.drop(self.act(self.fc7(x)))
        return self.classifier(x)


LargeFOVHead = VGGHead  # the name this head had when LargeFOV was the only VGG layout


@torch.no_grad()
def init_vgg_head_from_imagenet(head: VGGHead, vgg: nn.Module) -> None:
    """DeepLab's initialisation of fc6/fc7 from VGG16's ImageNet fc layers, subsampled to 1024 channels:
    ``fc6 = fc1[::4, :, ::3, ::3]`` (4096x512x7x7 -> 1024x512x3x3), ``fc7 = fc2[::4, ::4]``, biases ``[::4]``
    (DeepLab's "VGG16_20M" model, which the authors also start from; docs/paper_notes.md)."""
    fc1, fc2 = vgg.pre_logits.fc1, vgg.pre_logits.fc2
    expected = {"fc1": (4096, 512, 7, 7), "fc2": (4096, 4096, 1, 1)}
    for name, layer in (("fc1", fc1), ("fc2", fc2)):
        if tuple(layer.weight.shape) != expected[name]:
            raise RuntimeError(
                f"timm's vgg16.pre_logits.{name} has shape {tuple(layer.weight.shape)}, expected "
                f"{expected[name]}: this timm version changed the VGG layout"
            )
    head.fc6.weight.copy_(fc1.weight[::4, :, ::3, ::3])
    head.fc6.bias.copy_(fc1.bias[::4])
    head.fc7.weight.copy_(fc2.weight[::4, ::4])
    head.fc7.bias.copy_(fc2.bias[::4])


class ASPP(nn.Module):
    """DeepLab v2's atrous spatial pyramid pooling: one 3x3 classifier per dilation rate, summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for branch in self.branches:
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def new_modules(self) -> list[nn.Module]:
        return [self]

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([branch(x) for branch in self.branches]).sum(0)


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPPv3(nn.Module):
    """DeepLabv3's ASPP (Chen et al., 2017): a 1x1 branch, three 3x3 branches at ``rates`` (6/12/18 at output
    stride 16) and an image-pooling branch, each conv-BN-ReLU with ``channels`` outputs, concatenated, projected by
    a 1x1 conv-BN-ReLU, then a 1x1 classifier. The head of the authors' ResNet configuration."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18), channels: int = 256):
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)] + [conv_bn_relu(in_channels, channels, 3, r) for r in rates]
        )
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_channels, channels))
        self.project = conv_bn_relu(channels * (len(rates) + 2), channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def new_modules(self) -> list[nn.Module]:
        return [self]

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.image_pool(x).expand(-1, -1, *x.shape[-2:])
        return self.classifier(self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], 1)))


def build_vgg16_largefov(pretrained: bool = False, weights: str | None = None) -> nn.Sequential:
    """timm's ``vgg16.features`` at output stride 8, as DeepLab-LargeFOV has it (before any pooling swap)."""
    return build_vgg16_features_from(create_timm_model("vgg16", pretrained, weights), "largefov")


def build_vgg16_features_from(vgg: nn.Module, layout: str = "largefov") -> nn.Sequential:
    """Restructure a timm ``vgg16``'s features in place to output stride 8 and return them.

    timm's VGG asserts output_stride 32, so the restructuring is done here on its module tree: the five
    ``MaxPool2d`` get the windows and rounding of ``layout`` (:data:`VGG16_POOLS`, :data:`VGG16_CEIL_MODE`), conv5_1-3
    get dilation 2, and LargeFOV's pool5a (:data:`VGG16_POOL5A`) is appended: a pooling site like the others, an
    average pool in the pre-trained network (the Max row) and swapped by every other pooling. timm's
    ``pre_logits`` (fc6/fc7 as 7x7/1x1 convs of 4096 channels) is not part of the features: the head takes what
    it needs from it (:func:`init_vgg_head_from_imagenet`).
    """
    if layout not in VGG16_POOLS:
        raise ValueError(f"VGG16 layout must be one of {sorted(VGG16_POOLS)}, got {layout!r}")
    features = vgg.features
    # pool1..pool5 are the five MaxPool2d and conv5_1-3 the last three convs, in vgg16 and vgg16_bn alike
    pools = [i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    convs = [i for i, layer in enumerate(features) if isinstance(layer, nn.Conv2d)]
    if len(pools) != 5 or len(convs) != 13:
        raise RuntimeError(
            f"timm's VGG16 features have {len(pools)} MaxPool2d and {len(convs)} Conv2d, expected 5 "
            f"and 13: this timm version changed the VGG layout"
        )
    for index, (kernel, stride, padding) in zip(pools, VGG16_POOLS[layout]):
        features[index] = nn.MaxPool2d(kernel, stride, padding, ceil_mode=VGG16_CEIL_MODE[layout])
    for index in convs[-3:]:
        conv = features[index]
        conv.dilation, conv.padding = (2, 2), (2, 2)
    if VGG16_POOL5A[layout]:  # Caffe's AVE pooling divides by 9 at the border too: the padding counts
        features.append(nn.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=True))
    return features


def deeplab_v2_resnet(resnet: nn.Module) -> None:
    """DeepLab v2's ResNet at output stride 8, in place on a timm ResNet dilated to 8: every block of res4 (layer3)
    at rate 2 and of res5 (layer4) at rate 4, the first block included (``res4a_branch2b``, ``res5a_branch2b``: timm
    and torchvision keep the previous rate in a dilated stage's first block), and pool1 rounding up as Caffe's
    pooling does (tests/test_fidelity_resnet101.py holds the prototxt's table). A backbone without ResNet's
    ``layer3``/``layer4`` of bottleneck blocks is left as it is."""
    for stage, rate in (("layer3", 2), ("layer4", 4)):
        blocks = getattr(resnet, stage, None)
        if blocks is None or not hasattr(blocks[0], "conv2"):
            return
        for block in blocks:
            block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
    if isinstance(getattr(resnet, "maxpool", None), nn.MaxPool2d):
        resnet.maxpool.ceil_mode = True


class LastFeatureMap(nn.Module):
    """A timm ``features_only`` model that returns its deepest feature map instead of a list."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.out_channels = features.feature_info.channels()[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)[-1]


def unknown_backbone(name: str) -> ValueError:
    """The error for a backbone that is neither a timm model nor one of :data:`AUTHORS_BACKBONES`, with close names."""
    import difflib

    close = difflib.get_close_matches(name.split(".")[0], [*AUTHORS_BACKBONES, *timm.list_models()], n=10, cutoff=0.6)
    return ValueError(
        f"unknown backbone {name!r}: not a timm model nor one of {list(AUTHORS_BACKBONES)}; close names: {close}"
    )


def create_timm_model(name: str, pretrained: bool = False, weights: str | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` with the errors a user can act on: an unknown name lists close names; pretrained
    weights that cannot be downloaded (no network) say how to pass a local file instead; ``weights`` is a local
    file timm loads through ``pretrained_cfg_overlay=dict(file=...)``."""
    from pathlib import Path

    if not timm.is_model(name):
        raise unknown_backbone(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {path} does not exist: pass the path of a timm checkpoint or "
                f"state dict (.pth, .bin or .safetensors) for {name!r}"
            )
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        pretrained = True
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as error:
        if not pretrained or weights is not None:
            raise
        raise RuntimeError(
            f"could not load pretrained weights for timm model {name!r} ({type(error).__name__}: {error}). Without "
            f"network, download the weights where you have it (e.g. timm.create_model({name!r}, pretrained=True) "
            f"and torch.save(model.state_dict(), 'weights.pth')), then pass the file: weights='weights.pth' "
            f"(--model.weights on the command line), which timm loads with "
            f"pretrained_cfg_overlay=dict(file='weights.pth')"
        ) from error


class SegmentationNetwork(nn.Module):
    """``backbone`` (image -> feature map) and ``head`` (feature map -> logits), upsampled bilinearly to the
    input size."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.backbone(x))
        return nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_network(
    backbone: str,
    num_classes: int,
    head: str = "auto",
    output_stride: int = 8,
    pretrained: bool = False,
    weights: str | None = None,
) -> SegmentationNetwork:
    """The paper's networks.

    * ``vgg16`` or ``vgg16_bn`` (any timm tag, e.g. ``vgg16.tv_in1k``) with head ``vgg16_20m`` (the authors') or ``largefov``
      (DeepLab's; what ``auto`` picks): VGG16 features at output stride 8 and :class:`VGGHead`.
    * any other timm backbone (ResNets dilated to ``output_stride``; ``inception_v3`` at 32) with ``aspp``
      (DeepLab v2, what ``auto`` picks; a ResNet at output stride 8 dilated as DeepLab v2, :func:`deeplab_v2_resnet`)
      or ``aspp_v3`` (DeepLabv3: rates 6/12/18 at output stride 16, doubled at 8).
    * ``resnet50_authors`` (not a timm name) with ``deeplabv3_authors`` (what ``auto`` picks): the authors' own
      ResNet-50 (CSAIL's deep stem, multigrid layer4 of 4 blocks; output stride 8, 16 or 32) and their DeepLabv3
      decoder ``DeeplabV3ASPPBilinear``, as their code builds them (:mod:`polypool.models.authors_resnet`);
      ``weights``/``pretrained``: CSAIL's ``resnet50-imagenet.pth``. ``deeplabv3_authors`` also goes on any timm
      backbone (the decoder on its channels).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if backbone not in AUTHORS_BACKBONES and not timm.is_model(backbone):  # before the heads: 'vgg17' is unknown
        raise unknown_backbone(backbone)
    if backbone in AUTHORS_BACKBONES or head == "deeplabv3_authors":  # the authors' ResNet and/or their decoder
        from .authors_resnet import DeeplabV3ASPPBilinear, build_authors_resnet50

        if backbone in AUTHORS_BACKBONES:
            if head not in ("auto", "deeplabv3_authors"):
                raise ValueError(f"{backbone} takes head 'deeplabv3_authors' (the authors' decoder), got {head!r}")
            encoder: nn.Module = build_authors_resnet50(pretrained, weights, output_stride)
        elif backbone.split(".")[0] in VGG16_BACKBONES:
            raise ValueError(f"head 'deeplabv3_authors' takes a ResNet-like backbone, not {backbone!r}")
        else:
            stride = {} if output_stride == 32 else {"output_stride": output_stride}
            encoder = LastFeatureMap(
                create_timm_model(backbone, pretrained, weights, features_only=True, out_indices=(-1,), **stride)
            )
        return SegmentationNetwork(encoder, DeeplabV3ASPPBilinear(num_classes, encoder.out_channels))
    if backbone.split(".")[0] in VGG16_BACKBONES:
        head = "largefov" if head == "auto" else head
        if head not in VGG16_POOLS:
            raise ValueError(
                f"{backbone} takes head 'vgg16_20m' (the authors' layout) or 'largefov' (DeepLab's), got {head!r}"
            )
        if output_stride != 8:
            raise ValueError(
                f"the VGG16 segmentation networks have output stride 8 (got output_stride={output_stride})"
            )
        vgg = create_timm_model(backbone, pretrained, weights)
        features = build_vgg16_features_from(vgg, head)
        head_module: nn.Module = VGGHead(
            512, num_classes, dilation=VGG16_FC6_DILATION[head], channel_dropout=VGG16_CHANNEL_DROPOUT[head]
        )
        if pretrained or weights is not None:
            init_vgg_head_from_imagenet(head_module, vgg)
        return SegmentationNetwork(features, head_module)
    head = "aspp" if head == "auto" else head
    if head not in ("aspp", "aspp_v3"):
        raise ValueError(f"backbone {backbone!r} takes head 'aspp' or 'aspp_v3' ({head!r} is a VGG16 head)")
    kwargs = {"features_only": True, "out_indices": (-1,)}
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    try:
        features = LastFeatureMap(create_timm_model(backbone, pretrained, weights, **kwargs))
    except TypeError as error:
        raise ValueError(
            f"timm backbone {backbone!r} cannot be built with output_stride={output_stride} "
            f"({error}); use output_stride=32 for it"
        ) from error
    if head == "aspp":
        if output_stride == 8:
            deeplab_v2_resnet(features.features)
        head_module = ASPP(features.out_channels, num_classes)
    else:
        rates = tuple(r * max(16 // output_stride, 1) for r in (6, 12, 18))
        head_module = ASPPv3(features.out_channels, num_classes, rates)
    return SegmentationNetwork(features, head_module)
