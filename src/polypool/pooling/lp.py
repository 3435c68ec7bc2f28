"""Learned-norm (Lp) pooling (Gulcehre, Cho, Pascanu, Bengio, ECML-PKDD 2014, "Learned-Norm Pooling for Deep
Feedforward and Recurrent Neural Networks"); the baseline of the P-pooling paper's Sec. 3.6."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .bounded import clamp_inward
from .geometry import IntOrPair, Window, overhang_mask, pad_window_input, window_max, window_offsets


class LearnedNormPool2d(nn.Module):
    """``y = (mean_window |x|^p)^(1/p)`` with a learned ``p >= 1`` (one per channel, or one per layer).

    p = 1 is the average of |x| and p -> inf the max of |x|. Unlike ``nn.LPPool2d`` (the unnormalised sum), the
    mean is taken, with zero padding counted as in ``avg_pool2d(count_include_pad=True)`` (or, with
    ``count_include_pad=False``, not counted).

    Computed stably, as P-pooling is: with m the window max of |x| (detached: y is homogeneous in m, so this changes
    no gradient), y = m * (mean (|x|/m)^p)^(1/p), so no power overflows for any p. The analytic behaviour is kept as
    it is, this being a baseline: the P-pooling supplement (Sec. 2) shows its gradients misbehave at the boundaries
    (p = 1, p -> inf). Guards against NaN/Inf: an all-zero window gives y = 0 with finite gradients (the mean is
    clamped at the smallest normal float before the 1/p power), and p is kept in ``p_range`` by :func:`clamp_inward`.

    Learned parameter: ``p`` (``(C, 1, 1)`` or a scalar).
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: Optional[IntOrPair] = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        *,
        channels: Optional[int] = None,
        p_init: float = 2.0,
        p_range: tuple[float, float] = (1.0, 50.0),
        per_channel: bool = True,
        count_include_pad: bool = True,
    ):
        super().__init__()
        low, high = (float(v) for v in p_range)
        if not 1.0 <= low <= p_init <= high:
            raise ValueError(f"need 1 <= p_range[0] <= p_init <= p_range[1], got p_init={p_init}, p_range={p_range}")
        if per_channel and (channels is None or channels < 1):
            raise ValueError("per-channel p needs the number of channels: pass channels=C (or per_channel=False)")
        self.window = Window.make(kernel_size, stride, padding, ceil_mode)
        self.kernel_size, self.stride, self.padding = self.window.kernel, self.window.stride, self.window.padding
        self.ceil_mode, self.p_range = self.window.ceil_mode, (low, high)
        self.count_include_pad = bool(count_include_pad)
        self.p = nn.Parameter(torch.full((channels, 1, 1) if per_channel else (), float(p_init)))

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        out_h, out_w = self.window.output_size(height, width)
        p = clamp_inward(self.p, *self.p_range)
        magnitude = pad_window_input(x.abs(), self.window)
        m = window_max(magnitude.detach(), self.window, out_h, out_w)
        inv_m = torch.where(m > 0, m, torch.ones_like(m)).reciprocal()
        total, count = 0.0, 0.0
        for rows, cols, di, dj in window_offsets(self.window, out_h, out_w):
            term = (magnitude[..., rows, cols] * inv_m).pow(p)
            mask = overhang_mask(self.window, height, width, out_h, out_w, di, dj, term, self.count_include_pad)
            total = total + (term if mask is None else term * mask)
            count = count + (1.0 if mask is None else mask)
        mean = (total / count).clamp(min=torch.finfo(m.dtype).tiny)
        return m * mean.pow(1.0 / p)

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, p_range={self.p_range}"
        )
