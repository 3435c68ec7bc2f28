"""Strided-C: pooling replaced by a learned strided convolution (Springenberg et al., ICLR-W 2015,
"Striving for Simplicity: The All Convolutional Net")."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .geometry import IntOrPair, Window, pad_ceil_overhang


class StridedConvPool2d(nn.Module):
    """A ``channels -> channels`` convolution with the pooling's kernel, stride and padding.

    Springenberg et al. replace each pooling layer by a full convolution (every output channel sees every input
    channel); ``depthwise=True`` is the cheaper per-channel variant. The weights start as average pooling (the
    identity across channels, a uniform k x k kernel, no bias), so a pre-trained backbone starts unchanged: at
    initialisation the layer equals ``F.avg_pool2d(count_include_pad=True)``, except in ceil-mode windows that
    overhang the padded input (a convolution divides by k*k there, avg_pool2d by the covered count).

    Learned parameters: ``conv.weight``, ``conv.bias``.
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: Optional[IntOrPair] = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        *,
        channels: int,
        depthwise: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        if channels is None or channels < 1:
            raise ValueError("strided_conv pooling learns a channels -> channels convolution: pass channels=C")
        self.window = Window.make(kernel_size, stride, padding, ceil_mode)
        self.kernel_size, self.stride, self.padding = self.window.kernel, self.window.stride, self.window.padding
        self.ceil_mode, self.depthwise = self.window.ceil_mode, depthwise
        self.conv = nn.Conv2d(
            channels,
            channels,
            self.kernel_size,
            self.stride,
            self.padding,
            groups=channels if depthwise else 1,
            bias=bias,
        )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Average pooling: a uniform kernel on the diagonal (channel c -> c), zeros elsewhere."""
        kh, kw = self.kernel_size
        self.conv.weight.zero_()
        if self.depthwise:
            self.conv.weight.fill_(1.0 / (kh * kw))
        else:
            channels = self.conv.weight.shape[0]
            self.conv.weight[torch.arange(channels), torch.arange(channels)] = 1.0 / (kh * kw)
        if self.conv.bias is not None:
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_ceil_overhang(x, self.window))

    def extra_repr(self) -> str:
        return f"ceil_mode={self.ceil_mode}, depthwise={self.depthwise}"
