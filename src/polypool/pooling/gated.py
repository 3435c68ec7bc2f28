"""Gated and mixed max-average pooling (Lee, Gallagher, Tu, AISTATS 2016, "Generalizing Pooling Functions in
Convolutional Neural Networks: Mixed, Gated, and Tree")."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bounded import clamp_inward
from .geometry import IntOrPair, Window, pad_ceil_overhang


class _MaxAvgMix(nn.Module):
    """Shared by both layers: the window's max and average (``count_include_pad`` as at the replaced site)."""

    def __init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad: bool):
        super().__init__()
        self.window = Window.make(kernel_size, stride, padding, ceil_mode)
        self.kernel_size, self.stride, self.padding = self.window.kernel, self.window.stride, self.window.padding
        self.ceil_mode, self.count_include_pad = self.window.ceil_mode, count_include_pad

    def max_and_avg(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kwargs = self.window.as_kwargs()
        return F.max_pool2d(x, **kwargs), F.avg_pool2d(x, **kwargs, count_include_pad=self.count_include_pad)


class GatedPool2d(_MaxAvgMix):
    """Gated max-average pooling: ``f = s * max(x) + (1 - s) * avg(x)`` with ``s = sigmoid(w^T x)``.

    The gate depends on each region: ``w`` is a learned k x k mask applied to every window (a convolution with the
    pooling's kernel, stride and padding, zeros in the padding). ``gate="layer"`` shares one mask across channels
    (Lee et al.'s "one gate per layer", and what the P-pooling authors built for their baseline); ``gate="channel"``
    learns one mask per channel. Initialised random-normal, as the P-pooling authors did.

    Learned parameter: ``gate_weight`` (``(1, 1, kh, kw)`` or ``(C, 1, kh, kw)``).
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: Optional[IntOrPair] = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        *,
        channels: Optional[int] = None,
        gate: Literal["layer", "channel"] = "layer",
        init_std: float = 1.0,
        count_include_pad: bool = True,
    ):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        if gate not in ("layer", "channel"):
            raise ValueError(f"gate must be 'layer' or 'channel', got {gate!r}")
        if gate == "channel" and (channels is None or channels < 1):
            raise ValueError("gate='channel' learns one mask per channel: pass channels=C")
        self.gate = gate
        self.gate_weight = nn.Parameter(
            torch.randn(channels if gate == "channel" else 1, 1, *self.kernel_size) * init_std
        )

    def gate_values(self, x: Tensor) -> Tensor:
        """sigmoid(w^T x) per window and channel, shape of the output."""
        channels = x.shape[1]
        weight = self.gate_weight.expand(channels, 1, *self.kernel_size)  # "layer": one mask on every channel
        logits = F.conv2d(pad_ceil_overhang(x, self.window), weight, None, self.stride, self.padding, 1, channels)
        return torch.sigmoid(logits)

    def forward(self, x: Tensor) -> Tensor:
        pooled_max, pooled_avg = self.max_and_avg(x)
        gate = self.gate_values(x)
        return pooled_avg + gate * (pooled_max - pooled_avg)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, gate={self.gate}"
        )


class MixedPool2d(_MaxAvgMix):
    """Mixed max-average pooling: ``f = a * max(x) + (1 - a) * avg(x)`` with one learned ``a`` in [0, 1] per
    layer (Lee et al.), kept in range by :func:`clamp_inward`.

    Learned parameter: ``mix`` (a scalar, initialised to ``mix_init``).
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: Optional[IntOrPair] = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        *,
        channels: Optional[int] = None,
        mix_init: float = 0.5,
        count_include_pad: bool = True,
    ):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)
        if not 0.0 <= mix_init <= 1.0:
            raise ValueError(f"mix_init must lie in [0, 1], got {mix_init}")
        self.mix = nn.Parameter(torch.tensor(float(mix_init)))

    def forward(self, x: Tensor) -> Tensor:
        pooled_max, pooled_avg = self.max_and_avg(x)
        return pooled_avg + clamp_inward(self.mix, 0.0, 1.0) * (pooled_max - pooled_avg)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, mix={self.mix.item():.3g}"
        )
