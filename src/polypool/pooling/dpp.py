"""Detail-Preserving Pooling (Saeedan, Weber, Goesele, Roth, CVPR 2018, "Detail-Preserving Pooling in Deep
Networks")."""

from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bounded import clamp_inward
from .geometry import IntOrPair, Window, overhang_mask, pad_window_input, window_offsets


class DetailPreservingPool2d(nn.Module):
    """DPP: an adaptive weighted mean that rewards the window's details.

        y[p] = sum_q w(p, q) x[q] / sum_q w(p, q),   w(p, q) = alpha + rho_lambda(x[q] - x~[p])

    with ``rho_sym(d) = (d^2 + eps^2)^(lambda/2)`` or ``rho_asym(d) = (max(0, d)^2 + eps^2)^(lambda/2)`` (the
    asymmetric reward only favours values above the local mean), and x~ a linearly downscaled input:

    * ``variant="lite"``: a box filter, x~ = the window's mean (Lite-DPP);
    * ``variant="full"``: a learned, per-channel 3x3 filter (initialised to the normalised binomial
      [1 2 1]^T [1 2 1] / 16) smooths the input at full resolution, then the window's mean is taken.

    ``alpha`` and ``lambda_`` (both >= 0, one per channel, kept in range by :func:`clamp_inward`) start at 0, as in the
    P-pooling authors' re-implementation, so the layer starts as average pooling (``lambda = 0`` gives w = alpha + 1,
    a constant). The default, ``lite`` + ``asym``, is the variant the P-pooling authors used for their tables
    (docs/paper_notes.md). Padding is zeros, counted like ``avg_pool2d(count_include_pad=True)``;
    ``count_include_pad=False`` leaves it out of both the guide's mean and the weighted mean.

    Learned parameters: ``alpha``, ``lambda_`` (``(C, 1, 1)``) and, for ``full``, ``filter_weight`` (``(C, 1, 3, 3)``).
    """

    def __init__(
        self,
        kernel_size: IntOrPair,
        stride: Optional[IntOrPair] = None,
        padding: IntOrPair = 0,
        ceil_mode: bool = False,
        *,
        channels: int,
        variant: Literal["lite", "full"] = "lite",
        reward: Literal["asym", "sym"] = "asym",
        eps: float = 1e-3,
        alpha_init: float = 0.0,
        lambda_init: float = 0.0,
        count_include_pad: bool = True,
    ):
        super().__init__()
        if channels is None or channels < 1:
            raise ValueError("dpp pooling learns alpha and lambda per channel: pass channels=C")
        if variant not in ("lite", "full"):
            raise ValueError(f"variant must be 'lite' or 'full', got {variant!r}")
        if reward not in ("asym", "sym"):
            raise ValueError(f"reward must be 'asym' or 'sym', got {reward!r}")
        if alpha_init < 0 or lambda_init < 0:
            raise ValueError(f"alpha_init and lambda_init must be >= 0, got {alpha_init}, {lambda_init}")
        self.window = Window.make(kernel_size, stride, padding, ceil_mode)
        self.kernel_size, self.stride, self.padding = self.window.kernel, self.window.stride, self.window.padding
        self.ceil_mode, self.variant, self.reward, self.eps = self.window.ceil_mode, variant, reward, eps
        self.count_include_pad = bool(count_include_pad)
        self.alpha = nn.Parameter(torch.full((channels, 1, 1), float(alpha_init)))
        self.lambda_ = nn.Parameter(torch.full((channels, 1, 1), float(lambda_init)))
        if variant == "full":
            binomial = torch.tensor([1.0, 2.0, 1.0])
            kernel = torch.outer(binomial, binomial) / 16
            self.filter_weight = nn.Parameter(kernel.expand(channels, 1, 3, 3).clone())

    def guide(self, x: Tensor) -> Tensor:
        """x~: the linearly downscaled input, one value per output position."""
        if self.variant == "full":
            weight = self.filter_weight / self.filter_weight.sum(dim=(-2, -1), keepdim=True)
            x = F.conv2d(x, weight, padding=1, groups=x.shape[1])
        return F.avg_pool2d(x, **self.window.as_kwargs(), count_include_pad=self.count_include_pad)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        out_h, out_w = self.window.output_size(height, width)
        guide = self.guide(x)
        alpha, half_lambda = clamp_inward(self.alpha, 0.0), clamp_inward(self.lambda_, 0.0) / 2
        xp = pad_window_input(x, self.window)
        num = den = None
        for rows, cols, di, dj in window_offsets(self.window, out_h, out_w):
            value = xp[..., rows, cols]
            diff = value - guide
            if self.reward == "asym":
                diff = torch.relu(diff)
            weight = alpha + (diff * diff + self.eps**2).pow(half_lambda)
            mask = overhang_mask(self.window, height, width, out_h, out_w, di, dj, weight, self.count_include_pad)
            if mask is not None:
                weight = weight * mask
            num = weight * value if num is None else num + weight * value
            den = weight if den is None else den + weight
        return num / den

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, variant={self.variant}, reward={self.reward}"
        )
