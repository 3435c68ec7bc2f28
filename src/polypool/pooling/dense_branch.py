"""The authors' side branch that predicts a dense alpha (one per output position and channel), as torch ops.

    alpha = clamp(w_c * prelu_c(sum_i k_c,i * x_i * f_n,c) + b_c, lo, hi),   f_n,c = scale / (max_hw |x_n,c| + 1)

:func:`dense_branch_alpha` is the unfused branch: the reference the fused kernels (``cpu_fused.py``,
``triton_fused.py``) are tested against, and the path for everything they do not serve. ``branch_tensors`` and
``branch_grads`` are the layout the kernels take the branch's parameters in and give their gradients back in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Window, pad_ceil_overhang

__all__ = ["branch_grads", "branch_tensors", "dense_branch_alpha", "scale_gradient"]


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass (exactly: ``x.detach() + 0``), ``scale`` times its gradient in the backward pass."""
    if scale == 1.0:
        return x
    return x.detach() + (x - x.detach()) * scale


def dense_branch_alpha(
    x: Tensor,
    conv_weight: Tensor,
    prelu_weight: Tensor,
    proj_weight: Tensor,
    proj_bias: Tensor,
    window: Window,
    alpha_range: tuple[float, float],
    input_scale: float = 1.0,
) -> Tensor:
    """The unfused side branch: alpha ``(N, C, H_out, W_out)`` of the pooling input x (read detached)."""
    x = x.detach()
    x = x / (x.abs().amax(dim=(-2, -1), keepdim=True) + 1) * input_scale
    channels = x.shape[1]
    z = F.conv2d(pad_ceil_overhang(x, window), conv_weight, None, window.stride, window.padding, 1, channels)
    alpha = F.conv2d(F.prelu(z, prelu_weight), proj_weight, proj_bias, 1, 0, 1, channels)
    return alpha.clamp(*alpha_range)


def branch_tensors(
    conv_weight, prelu_weight, proj_weight, proj_bias, channels: int, taps: int, dtype: torch.dtype = torch.float32
):
    """The branch parameters as the kernels take them: in their compute dtype, contiguous, k (C, taps), slope, w,
    b (C,)."""

    def flat(t: Tensor, n: int) -> Tensor:
        return (
            t.detach().to(dtype).reshape(-1).expand(n).contiguous()
            if t.numel() == 1
            else t.detach().to(dtype).reshape(n).contiguous()
        )

    return (
        conv_weight.detach().to(dtype).reshape(channels, taps).contiguous(),
        flat(prelu_weight, channels),
        flat(proj_weight, channels),
        flat(proj_bias, channels),
    )


def branch_grads(partial: Tensor, n: int, channels: int, taps: int, params, grad_scale: float):
    """The kernels' per-plane sums (N*C, taps + 3) to the gradients of the four parameters, in their shapes."""
    sums = partial.view(n, channels, taps + 3).sum(dim=0) * grad_scale
    _conv_weight, _prelu_weight, _proj_weight, _proj_bias = params
    grads = (sums[:, :taps], sums[:, taps], sums[:, taps + 1], sums[:, taps + 2])
    # a parameter shared by the channels (PReLU's num_parameters=1) gets the sum over them
    return tuple((g.sum() if p.numel() == 1 else g).reshape(p.shape).to(p.dtype) for g, p in zip(grads, params))
