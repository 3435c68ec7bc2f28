"""Pooling ops and layers: P-pooling and the baselines of the paper's tables, behind ``build_pooling``."""

from .dense_alpha import dense_p_pool2d
from .dpp import DetailPreservingPool2d
from .functional import p_pool2d
from .gated import GatedPool2d, MixedPool2d
from .geometry import Window
from .lp import LearnedNormPool2d
from .ppool import PPool2d
from .registry import POOLING_NAMES, build_pooling, is_learned_pooling, pooling_options, pooling_parameters
from .strided_conv import StridedConvPool2d

__all__ = [
    "POOLING_NAMES",
    "DetailPreservingPool2d",
    "GatedPool2d",
    "LearnedNormPool2d",
    "MixedPool2d",
    "PPool2d",
    "StridedConvPool2d",
    "Window",
    "build_pooling",
    "dense_p_pool2d",
    "is_learned_pooling",
    "p_pool2d",
    "pooling_options",
    "pooling_parameters",
]
