"""The paper's segmentation networks (heads on timm backbones). The LightningModule comes with issue 6."""

from .networks import ASPP, LargeFOVHead, build_vgg16_largefov

__all__ = ["ASPP", "LargeFOVHead", "build_vgg16_largefov"]
