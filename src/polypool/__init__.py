"""polypool: Polynomial pooling (Wei et al., CVPR 2019) for timm backbones and Lightning segmentation."""

__version__ = "0.1.0"
