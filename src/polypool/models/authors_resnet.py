"""The authors' ResNet-50 encoder and DeepLabv3 decoder, built as their public code builds them.

Sources (the authors' code, "AC"; every fact below is read from these files):

* encoder: ``kfxw/mydev-pytorch-semantic-segmentation``, ``networks/resnet.py`` @
  4e5bf6c7af7097141e66d4c2e178ab0232eeaf5d (:data:`AUTHORS_RESNET_SOURCE`);
* decoder: same repository, ``networks/ModelBuilder.py`` (``DeeplabV3ASPPBilinear``) @
  27b6e5eac5e53cefcb6fbdb5e9c6ee47dba91855 (:data:`AUTHORS_DECODER_SOURCE`), the commit of the solver config
  ``deeplabv3_resnet_solver_cfg.py`` (arch_encoder='resnet50', arch_decoder='deeplabv3_aspp_bilinear',
  overall_stride=16, weights_encoder='resnet50-imagenet.pth'; :data:`AUTHORS_SOLVER_SOURCE`);
* ImageNet weights: CSAIL's ``resnet50-imagenet.pth`` (:data:`AUTHORS_RESNET50_URL`), whose key layout is CSAIL's
  ``models/resnet.py`` (``CSAILVision/semantic-segmentation-pytorch`` @ 192f5c9e1de2ca5367dc26a3f5b63688cabb1c50;
  :data:`CSAIL_RESNET_SOURCE`).

Encoder (:class:`AuthorsResNet`): CSAIL's deep stem (three 3x3 convs 3->64 stride 2, 64->64, 64->128, each BN-ReLU,
then ``MaxPool2d(3, 2, padding=1)``, the one local pooling site), then Bottleneck stages of 3, 4, 6 blocks (the
stride on the 3x3 conv, padding = dilation) and a multigrid layer4. At output stride 16 layer4 is built as
``block(inplanes, 512, stride=1, downsample)`` (dilation 1) **plus** three multigrid blocks at dilations
(1, 2, 4) x 2 = 2, 4, 8: four blocks, not ResNet-50's three (28,094,400 parameters instead of 23,631,808). Module
names equal CSAIL's, so their ImageNet file loads by name.

Loading the weights (:func:`load_authors_resnet50_weights`) keeps the authors' quirk: their code loads the file with
``strict=False``, so ``fc.*`` is ignored, ``layer4.3.*`` (absent from the 3-block ImageNet model) keeps its
initialisation, and the ImageNet ``layer4.0`` (trained with stride 2) loads into the stride-1 block. Unlike theirs,
the load is checked: anything missing other than ``layer4.3.*`` or unexpected other than ``fc.*``, or any shape
mismatch, is an error that names the keys.

Decoder (:class:`DeeplabV3ASPPBilinear`): image pooling, a 1x1 branch and three depthwise-separable 3x3 branches at
rates 6/12/18 (256 channels each), concatenated (1280), projected to 308 channels with ``Dropout2d(0.5)``, then two
depthwise-separable 3x3 convs and a 1x1 classifier. The dropout is in the config's commit 27b6e5e; it was commented
out later, in c1d4aaa284a2be41ae0e4a16f7f8a14d0fc9d4af (:data:`AUTHORS_DECODER_DROPOUT_REMOVED`), so it is the
argument ``projection_dropout`` (0.5 by default, as at 27b6e5e).

BatchNorm: theirs is ``SynchronizedBatchNorm2d`` (``lib/nn/modules/batchnorm.py``, eps 1e-5, momentum 0.001), which
on one GPU (the config's ``gpu_id = [1]``) is ``F.batch_norm``: ``nn.BatchNorm2d(momentum=0.001)`` here.
Initialisation (their ``weights_init``, applied to encoder and decoder): ``kaiming_normal_`` on every conv weight,
BatchNorm weight 1 and bias 1e-4 (:func:`authors_weights_init`).

Input normalisation (their ``data/voc/VOCDataset_newstyle.py`` @ c31dcf926aa3f4bbbec60f53a8eac7e558aa1070): RGB,
``ToTensor`` then ``Normalize(mean=(0.48108, 0.45753, 0.40787), std=(0.5, 0.5, 0.5))``
(:data:`AUTHORS_MEAN`, :data:`AUTHORS_STD`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AUTHORS_REPO = "kfxw/mydev-pytorch-semantic-segmentation"
AUTHORS_RESNET_SOURCE = f"{AUTHORS_REPO} networks/resnet.py @ 4e5bf6c7af7097141e66d4c2e178ab0232eeaf5d"
AUTHORS_DECODER_SOURCE = f"{AUTHORS_REPO} networks/ModelBuilder.py @ 27b6e5eac5e53cefcb6fbdb5e9c6ee47dba91855"
AUTHORS_DECODER_DROPOUT_REMOVED = f"{AUTHORS_REPO} networks/ModelBuilder.py @ c1d4aaa284a2be41ae0e4a16f7f8a14d0fc9d4af"
AUTHORS_SOLVER_SOURCE = f"{AUTHORS_REPO} deeplabv3_resnet_solver_cfg.py @ 27b6e5eac5e53cefcb6fbdb5e9c6ee47dba91855"
AUTHORS_NORMALISATION_SOURCE = (
    f"{AUTHORS_REPO} data/voc/VOCDataset_newstyle.py @ c31dcf926aa3f4bbbec60f53a8eac7e558aa1070"
)
CSAIL_RESNET_SOURCE = (
    "CSAILVision/semantic-segmentation-pytorch models/resnet.py @ 192f5c9e1de2ca5367dc26a3f5b63688cabb1c50"
)
AUTHORS_RESNET50_URL = "http://sceneparsing.csail.mit.edu/model/pretrained_resnet/resnet50-imagenet.pth"
AUTHORS_RESNET50_FILE = "resnet50-imagenet.pth"
AUTHORS_MEAN = (0.48108, 0.45753, 0.40787)  # RGB, on [0, 1] images (ToTensor)
AUTHORS_STD = (0.5, 0.5, 0.5)
BN_MOMENTUM = 0.001  # their SynchronizedBatchNorm2d's default (eps 1e-5, PyTorch's)
# what CSAIL's 3-block layer4 file may lack, and what it may hold that the encoder has not (their strict=False)
ALLOWED_MISSING_PREFIX = "layer4.3."
ALLOWED_UNEXPECTED_PREFIX = "fc."

log = logging.getLogger(__name__)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=BN_MOMENTUM)


@torch.no_grad()
def authors_weights_init(module: nn.Module) -> None:
    """Their ``weights_init`` (ModelBuilder / ResnetModelBuilder): ``kaiming_normal_`` on conv weights (biases keep
    PyTorch's default), BatchNorm weight 1 and bias 1e-4. Use with ``module.apply``."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.weight.fill_(1.0)
        module.bias.fill_(1e-4)


class Bottleneck(nn.Module):
    """Their Bottleneck (expansion 4): 1x1 -> BN -> ReLU -> 3x3 (stride, padding = dilation) -> BN -> ReLU -> 1x1
    -> BN, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None, dilation: int = 1
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class AuthorsResNet(nn.Module):
    """The authors' dilated ResNet encoder (:data:`AUTHORS_RESNET_SOURCE`; module docstring). ``forward`` returns
    layer4's map, ``out_channels`` = 2048.

    ``output_stride`` (their ``overall_stride``): 32 (layer3 and layer4 stride 2, multigrid dilations 1, 2, 4),
    16 (layer3 stride 2; layer4 stride 1, dilations 2, 4, 8: the config's) or 8 (layer3 stride 1 with dilation 2
    after its first block; layer4 as at 16). layer4 always has ``layers[3] + 1`` blocks (their multigrid blocks
    come after the first one).
    """

    out_channels = 2048
    # their ResNet.__init__: (layer3 stride, layer3 dilation, layer4 stride, layer4 multigrid dilation)
    STAGES = {32: (2, 1, 2, 1), 16: (2, 1, 1, 2), 8: (1, 2, 1, 2)}
    MULTIGRID = (1, 2, 4)

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), output_stride: int = 16, init: bool = True):
        super().__init__()
        if output_stride not in self.STAGES:
            raise ValueError(
                f"the authors' ResNet has output stride 8, 16 or 32 (their overall_stride), got {output_stride}"
            )
        if layers[3] != len(self.MULTIGRID):
            raise ValueError(f"the authors' multigrid layer4 needs layers[3] == 3 (their assert), got {layers[3]}")
        self.output_stride = output_stride
        self.inplanes = 128
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = _bn(64)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = _bn(64)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn3 = _bn(128)
        self.relu3 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stride3, dilation3, stride4, dilation4 = self.STAGES[output_stride]
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=stride3, multi_dilation=dilation3)
        self.layer4 = self._make_layer(512, layers[3], stride=stride4, multigrid=True, multi_dilation=dilation4)
        if init:
            self.apply(authors_weights_init)

    def _make_layer(
        self, planes: int, blocks: int, stride: int = 1, multigrid: bool = False, multi_dilation: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                _bn(planes * Bottleneck.expansion),
            )
        # the first block: their block(inplanes, planes, stride, downsample), dilation left at 1
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        if multigrid:  # three MORE blocks (their loop runs over the whole grid after the first block)
            layers += [Bottleneck(self.inplanes, planes, dilation=d * multi_dilation) for d in self.MULTIGRID]
        else:
            layers += [Bottleneck(self.inplanes, planes, dilation=multi_dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _conv_bn_relu(
    in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1, groups: int = 1
) -> list[nn.Module]:
    padding = dilation * (kernel // 2)
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, groups=groups, bias=False),
        _bn(out_channels),
        nn.ReLU(inplace=True),
    ]


class DeeplabV3ASPPBilinear(nn.Module):
    """Their decoder ``DeeplabV3ASPPBilinear`` (:data:`AUTHORS_DECODER_SOURCE`), module names as theirs:

    * ``gap``: global average pool -> 1x1 conv (fc_dim -> 256) -> BN -> ReLU, upsampled bilinearly
      (align_corners=False) to the feature map's size;
    * ``aspp0``: 1x1 conv -> BN -> ReLU; ``aspp1..3``: depthwise 3x3 at rate r (padding r, groups fc_dim) -> BN ->
      ReLU -> 1x1 conv (-> 256) -> BN -> ReLU;
    * ``cat_projection`` on [gap, aspp0, aspp1, aspp2, aspp3] (1280 channels): 1x1 conv -> 308 -> BN -> ReLU ->
      ``Dropout2d(projection_dropout)``;
    * ``decoder_projection``: depthwise 3x3 (308) -> BN -> ReLU -> 1x1 (308 -> 256) -> BN -> ReLU -> depthwise 3x3
      (256) -> BN -> ReLU -> 1x1 (256 -> 256) -> BN -> ReLU -> 1x1 classifier (the only conv with a bias).

    Logits come out at the feature map's resolution (:class:`SegmentationNetwork` upsamples them to the input's, as
    their ``forward`` does to ``segSize``). Their ModelBuilder always passes rates (6, 12, 18), whatever the output
    stride. ``projection_dropout``: 0.5 at the config's commit 27b6e5e; commented out in c1d4aaa.
    """

    def __init__(
        self,
        num_classes: int,
        fc_dim: int = 2048,
        dilation_rates: Sequence[int] = (6, 12, 18),
        projection_dropout: float = 0.5,
        init: bool = True,
    ):
        super().__init__()
        self.aspp0 = nn.Sequential(*_conv_bn_relu(fc_dim, 256))
        self.aspp1, self.aspp2, self.aspp3 = (
            nn.Sequential(*_conv_bn_relu(fc_dim, fc_dim, 3, rate, groups=fc_dim), *_conv_bn_relu(fc_dim, 256))
            for rate in dilation_rates
        )
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), *_conv_bn_relu(fc_dim, 256))
        self.cat_projection = nn.Sequential(*_conv_bn_relu(1280, 308), nn.Dropout2d(p=projection_dropout))
        self.decoder_projection = nn.Sequential(
            *_conv_bn_relu(308, 308, 3, groups=308),
            *_conv_bn_relu(308, 256),
            *_conv_bn_relu(256, 256, 3, groups=256),
            *_conv_bn_relu(256, 256),
            nn.Conv2d(256, num_classes, kernel_size=1, bias=True),
        )
        if init:
            self.apply(authors_weights_init)

    def new_modules(self) -> list[nn.Module]:
        """The layers that never come from ImageNet weights: the whole decoder."""
        return [self]

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.interpolate(self.gap(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = torch.cat([pooled, self.aspp0(x), self.aspp1(x), self.aspp2(x), self.aspp3(x)], dim=1)
        return self.decoder_projection(self.cat_projection(x))


@dataclass
class WeightsReport:
    """What a non-strict load left out: ``missing`` (kept at their init) and ``unexpected`` (ignored) keys."""

    source: str
    missing: list[str]
    unexpected: list[str]

    def __str__(self) -> str:
        return (
            f"loaded {self.source} with strict=False as the authors' code does: {len(self.missing)} keys kept "
            f"at init ({_summary(self.missing)}), {len(self.unexpected)} ignored ({_summary(self.unexpected)})"
        )


def _summary(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_authors_resnet50_weights(
    encoder: AuthorsResNet, state: Mapping[str, Tensor], source: str = AUTHORS_RESNET50_FILE
) -> WeightsReport:
    """Load CSAIL's ImageNet ResNet-50 state dict into ``encoder`` as the authors do (``strict=False``), after
    checking that it is that file: the keys missing from it must be exactly ``layer4.3.*`` (the extra multigrid
    block, which keeps its init), the extra keys only ``fc.*`` (ignored), and every shared key's shape must match;
    otherwise a ValueError names the keys. ``num_batches_tracked`` buffers (absent from 2018 files) are not counted.
    """
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"{source} is not a state dict of tensors (expected CSAIL's {AUTHORS_RESNET50_FILE}, "
            f"{AUTHORS_RESNET50_URL})"
        )
    expected = {k: v for k, v in encoder.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    extra_block = sorted(k for k in expected if k.startswith(ALLOWED_MISSING_PREFIX))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    bad_missing = sorted(set(missing) - set(extra_block))
    present_extra = sorted(set(extra_block) - set(missing))
    bad_unexpected = [k for k in unexpected if not k.startswith(ALLOWED_UNEXPECTED_PREFIX)]
    if bad_missing or present_extra or bad_unexpected or wrong_shape:
        problems = []
        if bad_missing:
            problems.append(f"missing {_summary(bad_missing)} (only {ALLOWED_MISSING_PREFIX}* may be missing)")
        if present_extra:
            problems.append(
                f"holds {_summary(present_extra)} (CSAIL's ImageNet ResNet-50 has 3 layer4 blocks: "
                f"{ALLOWED_MISSING_PREFIX}* must be missing)"
            )
        if bad_unexpected:
            problems.append(f"unexpected {_summary(bad_unexpected)} (only {ALLOWED_UNEXPECTED_PREFIX}* may be extra)")
        if wrong_shape:
            problems.append(f"wrong shape {_summary(wrong_shape)}")
        raise ValueError(
            f"{source} does not have the layout of CSAIL's {AUTHORS_RESNET50_FILE} "
            f"({AUTHORS_RESNET50_URL}; keys of {CSAIL_RESNET_SOURCE}): " + "; ".join(problems)
        )
    result = encoder.load_state_dict(state, strict=False)
    report = WeightsReport(source, sorted(result.missing_keys), sorted(result.unexpected_keys))
    log.info("%s", report)
    return report


def build_authors_resnet50(
    pretrained: bool = False, weights: str | None = None, output_stride: int = 16
) -> AuthorsResNet:
    """The authors' ResNet-50 encoder (:class:`AuthorsResNet`), with CSAIL's ImageNet weights from ``weights`` (a
    local ``resnet50-imagenet.pth``) or, with ``pretrained``, downloaded from :data:`AUTHORS_RESNET50_URL` into
    torch.hub's cache (``$TORCH_HOME/hub/checkpoints``). The load report is ``encoder.weights_report``."""
    encoder = AuthorsResNet(output_stride=output_stride)
    encoder.weights_report = None
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {path} does not exist: pass CSAIL's {AUTHORS_RESNET50_FILE} "
                f"({AUTHORS_RESNET50_URL}) for resnet50_authors"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder.weights_report = load_authors_resnet50_weights(encoder, state, str(path))
    elif pretrained:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        try:
            state = torch.hub.load_state_dict_from_url(
                AUTHORS_RESNET50_URL,
                map_location="cpu",
                progress=False,
                file_name=AUTHORS_RESNET50_FILE,
                weights_only=True,
            )
        except Exception as error:
            raise RuntimeError(
                f"could not download the authors' ImageNet ResNet-50 weights from {AUTHORS_RESNET50_URL} into "
                f"{cache} ({type(error).__name__}: {error}). Without network, download the file where you have it "
                f"and put it in {cache / AUTHORS_RESNET50_FILE}, or pass it: --model.weights FILE "
                f"(weights='{AUTHORS_RESNET50_FILE}')"
            ) from error
        encoder.weights_report = load_authors_resnet50_weights(encoder, state, AUTHORS_RESNET50_URL)
    return encoder
