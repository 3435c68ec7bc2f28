"""What the fused kernels (C++ on CPU, Triton on GPU) share: how they take alpha, how their alpha gradient is
summed back, and how they report a negative input.

A kernel takes alpha in one of two layouts: one fp32 value per (sample, channel) plane, for a fixed float and
for layer/channel alpha, or a dense ``(N, C, H_out, W_out)`` map. Its alpha gradient comes back in the same
layout and is summed over whatever the user's alpha broadcast along.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .geometry import Window


class NegativeInput(Exception):
    """Raised by a fused forward that met a negative x: its arithmetic assumes x >= 0. ``p_pool2d`` catches it and
    takes the windows with a negative element through the signed path (:mod:`polypool.pooling.signed`), the kernel
    serving the others. The kernels check the window elements as they read them, so the common (post-ReLU) case
    costs no extra pass over x."""


def raise_if_negative(kernel_saw_negative: bool, x: Tensor, window: Window) -> None:
    """Raise NegativeInput if the kernel saw a negative, or an element that no window covers is negative."""
    if kernel_saw_negative or uncovered_negative(x, window):
        raise NegativeInput


def uncovered_negative(x: Tensor, window: Window) -> bool:
    """Whether x has a negative element that no window reads (floor mode can leave trailing rows/columns)."""
    height, width = x.shape[-2:]
    out_h, out_w = window.output_size(height, width)
    end_h = (out_h - 1) * window.stride[0] + window.kernel[0] - window.padding[0]
    end_w = (out_w - 1) * window.stride[1] + window.kernel[1] - window.padding[1]
    return bool(end_h < height and (x[..., end_h:, :] < 0).any()) or bool(
        end_w < width and (x[..., :, end_w:] < 0).any()
    )


def is_channels_last(x: Tensor) -> bool:
    """Whether x is laid out channels_last (and not also plain contiguous, as a C = 1 or 1x1 map can be): then
    ``max_pool2d`` returns channels_last y and dx, and so do the fused paths."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def alpha_is_dense(alpha) -> bool:
    """Whether alpha varies over the output positions (then the kernels take one value per output)."""
    return (
        isinstance(alpha, Tensor)
        and alpha.dim() >= 1
        and (alpha.shape[-1] != 1 or (alpha.dim() >= 2 and alpha.shape[-2] != 1))
    )


def kernel_alpha(
    alpha,
    n: int,
    c: int,
    out_h: int,
    out_w: int,
    device: torch.device,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, bool]:
    """(alpha as a dense tensor of the kernel's compute dtype, dense): ``(N*C,)`` per plane, or
    ``(N, C, out_h, out_w)`` when dense, laid out like the output (channels_last when ``channels_last``)."""
    if not isinstance(alpha, Tensor):
        return torch.full((n * c,), float(alpha), device=device, dtype=dtype), False
    a = alpha.detach().to(device=device, dtype=dtype)
    while a.dim() < 4:
        a = a.unsqueeze(0)
    if not alpha_is_dense(a):
        return a.expand(n, c, 1, 1).reshape(n * c).contiguous(), False
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return a.expand(n, c, out_h, out_w).contiguous(memory_format=memory_format), True


def alpha_grad_to_shape(
    grad: Tensor, dense: bool, n: int, c: int, alpha_shape: torch.Size, dtype: Optional[torch.dtype]
) -> Tensor:
    """The kernel's alpha gradient (per plane ``(N*C,)`` or dense) summed to the user's alpha shape and dtype."""
    if not dense:
        grad = grad.view(n, c, 1, 1)
    return grad.sum_to_size(alpha_shape).to(dtype)


def runs_through(y: Tensor, function_name: str) -> bool:
    """Whether the autograd graph of y runs through a node whose type name contains ``function_name`` (an
    autograd Function such as ``"PPool2dTriton"`` or ``"PPool2dCPU"``): which path computed y. Used by the tests
    and by ``make gpu-check``."""
    stack, seen = [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if function_name in type(node).__name__:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False
