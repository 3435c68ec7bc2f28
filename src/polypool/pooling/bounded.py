"""Keeping a learned pooling parameter in its range: a clamp whose gradient never freezes the parameter."""

from __future__ import annotations

import torch
from torch import Tensor


class _ClampInward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bounds = (low, high)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        low, high = ctx.bounds
        # Block only the components that would push x further out (gradient descent moves x by -grad).
        pushes_out = ((x <= low) & (grad > 0)) | ((x >= high) & (grad < 0))
        return torch.where(pushes_out, torch.zeros_like(grad), grad), None, None


def clamp_inward(x: Tensor, low: float, high: float = float("inf")) -> Tensor:
    """``x.clamp(low, high)`` whose gradient at or beyond a bound is kept when it points back inside.

    A plain clamp (or Hardtanh) has zero gradient at its bounds, so a parameter initialised on one (alpha = 0 for
    average pooling, DPP's alpha = lambda = 0) or stepped past it would never move again. This is the gradient of a
    projection onto [low, high]: descent can move the parameter along or back into the range, never further out.
    """
    return _ClampInward.apply(x, float(low), float(high))
