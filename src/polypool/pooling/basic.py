"""Max and average pooling: torch's own layers, behind the registry's constructor signature."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .geometry import IntOrPair, Window


def max_pool(
    kernel_size: IntOrPair,
    stride: Optional[IntOrPair] = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    *,
    channels: Optional[int] = None,
    dilation: IntOrPair = 1,
) -> nn.MaxPool2d:
    """``nn.MaxPool2d``, keeping the ``dilation`` of the site it replaces (``channels`` is accepted for a uniform
    signature and ignored)."""
    window = Window.make(kernel_size, stride, padding, ceil_mode)
    return nn.MaxPool2d(window.kernel, window.stride, window.padding, dilation=dilation, ceil_mode=window.ceil_mode)


def avg_pool(
    kernel_size: IntOrPair,
    stride: Optional[IntOrPair] = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    *,
    channels: Optional[int] = None,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> nn.AvgPool2d:
    """``nn.AvgPool2d``, keeping ``count_include_pad`` of the site it replaces."""
    window = Window.make(kernel_size, stride, padding, ceil_mode)
    return nn.AvgPool2d(
        window.kernel,
        window.stride,
        window.padding,
        ceil_mode=window.ceil_mode,
        count_include_pad=count_include_pad,
        divisor_override=divisor_override,
    )
