"""The paper's segmentation networks (heads on timm backbones) and the LightningModule that trains them."""

from .networks import (
    ASPP,
    ASPPv3,
    LargeFOVHead,
    SegmentationNetwork,
    VGGHead,
    build_network,
    build_vgg16_largefov,
    create_timm_model,
)
from .segmentation import SegmentationModel

__all__ = [
    "ASPP",
    "ASPPv3",
    "LargeFOVHead",
    "VGGHead",
    "SegmentationModel",
    "SegmentationNetwork",
    "build_network",
    "build_vgg16_largefov",
    "create_timm_model",
]
