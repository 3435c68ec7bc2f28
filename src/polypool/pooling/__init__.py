"""Pooling ops and layers: P-pooling and the baselines of the paper's tables."""

from .functional import p_pool2d
from .geometry import Window
from .ppool import PPool2d

__all__ = ["p_pool2d", "PPool2d", "Window"]
