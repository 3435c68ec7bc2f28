"""How the fused kernels (C++ on CPU, Triton on GPU) take alpha, and how their alpha gradient is summed back.

A kernel takes alpha in one of two layouts: one fp32 value per (sample, channel) plane, for a fixed float and
for layer/channel alpha, or a dense ``(N, C, H_out, W_out)`` map. Its alpha gradient comes back in the same
layout and is summed over whatever the user's alpha broadcast along.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def kernel_alpha(alpha, n: int, c: int, out_h: int, out_w: int, device: torch.device) -> tuple[Tensor, bool]:
    """(alpha as a contiguous fp32 tensor, dense): ``(N*C,)`` per plane, or ``(N, C, out_h, out_w)`` when dense."""
    if not isinstance(alpha, Tensor):
        return torch.full((n * c,), float(alpha), device=device), False
    a = alpha.detach().to(device=device, dtype=torch.float32)
    while a.dim() < 4:
        a = a.unsqueeze(0)
    if a.shape[-1] == 1 and a.shape[-2] == 1:
        return a.expand(n, c, 1, 1).reshape(n * c).contiguous(), False
    return a.expand(n, c, out_h, out_w).contiguous(), True


def alpha_grad_to_shape(grad: Tensor, dense: bool, n: int, c: int, alpha_shape: torch.Size,
                        dtype: Optional[torch.dtype]) -> Tensor:
    """The kernel's alpha gradient (per plane ``(N*C,)`` or dense) summed to the user's alpha shape and dtype."""
    if not dense:
        grad = grad.view(n, c, 1, 1)
    return grad.sum_to_size(alpha_shape).to(dtype)
