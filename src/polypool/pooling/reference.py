"""P-pooling (Wei et al., CVPR 2019): the exact, numerically stable reference op, for finite x >= 0.

``PPool2dReference`` is the autograd Function; :func:`polypool.pooling.p_pool2d` (``functional.py``) picks
the backend for each call, and the fused kernels are tested against this op and fall back to it.

    y_j = sum_{i in R_j} x_i^(a+1) / sum_{i in R_j} x_i^a,   a >= 0

a = 0 is average pooling and a -> inf is max pooling, in forward and backward (supplement, Props 1-2).

How it is computed, and why
---------------------------
* **Max-normalised form.** With m_j the window max and r_i = x_i / m_j in [0, 1],
  y_j = m_j * sum r^(a+1) / sum r^a. The max element contributes exactly 1 to the denominator, so nothing
  overflows for any a, and an underflow of r^a to 0 is the correct a -> inf limit. All arithmetic is in fp32
  (fp64 for fp64 inputs), whatever the input dtype.
* **One window offset at a time.** Instead of unfolding (k*k/stride^2 copies of x), the op loops over the
  kh*kw offsets of the window; each offset is a strided view of x of the output's size. Memory stays at a few
  output-sized buffers and the same code serves every kernel/stride/padding/ceil_mode.
* **Analytic backward** (supplement Sec. 1, docs/paper_notes.md), with w_i = r_i^a / sum r^a and q = y / m:
      dy/dx_i = w_i * ((a+1) - a*q/r_i),        dy/da = m * sum_i w_i (r_i - q) ln r_i.
  Only the window max m and the denominator sum r^a are saved besides x and y (and q = y/m in fp32 for
  fp16/bf16 inputs); naive autograd keeps four input-sized intermediates.

Conventions, all documented in the README
-----------------------------------------
* Padding is zeros, counted in the window like ``avg_pool2d(count_include_pad=True)`` (``count_include_pad=False``
  leaves it out); in ceil mode the part of a window that overhangs the padded input is not part of the window (as
  in ``avg_pool2d``).
* 0^0 = 1 (torch.pow), so at a = 0 zeros, padding included, count as elements: Prop. 1 holds exactly.
* A window of all zeros gives y = 0 and the average-pooling gradient (finite, never NaN).
* Where x_i = 0 and 0 < a < 1 the exact dy/dx_i is -inf (x^a has an infinite slope at 0); we take its weight's
  convention instead: a term with w_i = 0 contributes 0, as torch.pow's exponent gradient does at base 0. The
  same convention gives 0*ln 0 = 0 in dy/da.
* This op assumes a finite x >= 0 (the ReLU outputs the paper pools). :func:`polypool.pooling.p_pool2d` sends
  the windows with a negative or non-finite element to :mod:`.signed`, and ``alpha=inf`` to the window max.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

from .geometry import Window, overhang_mask, pad_window_input, window_max, window_offsets

Alpha = Union[float, Tensor]

__all__ = ["Alpha", "PPool2dReference", "accumulation_dtype"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _normaliser(m: Tensor, acc: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(m, 1/m, is_zero) with a window max below the smallest normal number flushed to 0 (its reciprocal would
    overflow) and 1/m := 1 where the window is then all zeros; r = x/m + is_zero is 1 there."""
    m = m.to(acc)
    zero = m < torch.finfo(acc).tiny  # NaN stays NaN: NaN < tiny is False
    m = torch.where(zero, 0.0, m)
    inv_m = torch.where(zero, torch.ones_like(m), m).reciprocal_()
    return m, inv_m, zero.to(acc)


def _unit_ratio(v: Tensor, inv_m: Tensor, zero: Tensor) -> Tensor:
    """r = x/m in [0, 1] (1 in an all-zero window), with subnormals flushed: an element x or a ratio r below the
    smallest normal number counts as 0, as on a GPU that flushes denormals. So 1/r, r^a and ln r stay finite."""
    r = torch.addcmul(zero, v, inv_m)
    tiny = torch.finfo(r.dtype).tiny
    return torch.where((v < tiny) | (r < tiny), zero, r)


def _window_max(xp: Tensor, window: Window, out_h: int, out_w: int) -> Tensor:
    """The window max; when traced (torch.compile, torch.export) without ``out=`` ops, which an exported program
    cannot run where an input requires grad ("functions with out=... arguments don't support automatic
    differentiation")."""
    if not torch.compiler.is_compiling():
        return window_max(xp, window, out_h, out_w)
    m = None
    for rows, cols, _, _ in window_offsets(window, out_h, out_w):
        m = xp[..., rows, cols] if m is None else torch.maximum(m, xp[..., rows, cols])
    return m


class PPool2dReference(torch.autograd.Function):
    """Forward and analytic backward of P-pooling on a non-negative input."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Alpha, window: Window, include_pad: bool = True):
        height, width = x.shape[-2:]
        out_h, out_w = window.output_size(height, width)
        acc = accumulation_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xp = pad_window_input(x, window)
            m, inv_m, zero = _normaliser(_window_max(xp, window, out_h, out_w), acc)
            a = alpha.to(acc) if isinstance(alpha, Tensor) else float(alpha)
            num = torch.zeros(m.shape, dtype=acc, device=x.device)
            den = torch.zeros_like(num)
            for rows, cols, di, dj in window_offsets(window, out_h, out_w):
                r = _unit_ratio(xp[..., rows, cols], inv_m, zero)  # x/m, or 1 in an all-zero window
                p = r.pow(a)
                mask = overhang_mask(window, height, width, out_h, out_w, di, dj, p, include_pad)
                if mask is not None:
                    p.mul_(mask)
                den.add_(p)
                num.addcmul_(p, r)
            q = num.div_(den)  # den >= 1: the max element (or every element of an all-zero window) adds 1
            y = (q * m).to(x.dtype)
            m = m.to(x.dtype)
        # Backward needs q = y/m to ~1e-7: it enters as (a+1) - a*q/r, a difference of O(a) terms. In fp32/fp64
        # y/m is that exact and y costs nothing to keep (it is the output); in fp16/bf16 keep q itself in fp32.
        exact_output = x.dtype == acc
        ctx.q_from_output = exact_output
        ctx.window = window
        ctx.alpha_shape = alpha.shape if isinstance(alpha, Tensor) else None
        ctx.alpha_value = None if isinstance(alpha, Tensor) else float(alpha)
        tensors = (x, m, den.to(x.dtype), y if exact_output else q)
        ctx.save_for_backward(*tensors, *((alpha,) if isinstance(alpha, Tensor) else ()))
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, m, den, y_or_q, *alpha_tensor = ctx.saved_tensors
        alpha = alpha_tensor[0] if alpha_tensor else ctx.alpha_value
        window: Window = ctx.window
        need_x, need_alpha = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        height, width = x.shape[-2:]
        out_h, out_w = m.shape[-2:]
        acc = accumulation_dtype(x.dtype)
        with torch.autocast(device_type=x.device.type, enabled=False):
            m, inv_m, zero = _normaliser(m, acc)  # m was saved flushed: this only rebuilds 1/m
            # q = y/m, and 1 in an all-zero window (y = 0, every r = 1)
            q = torch.addcmul(zero, y_or_q.to(acc), inv_m) if ctx.q_from_output else y_or_q
            a = alpha.to(acc) if isinstance(alpha, Tensor) else alpha
            g_over_den = grad_y.to(acc) / den.to(acc)
            xp = pad_window_input(x, window)
            grad_xp = torch.zeros(xp.shape, dtype=acc, device=x.device) if need_x else None
            # r^(a-1) at r = 0: 1 if a == 1, else 0 (exact for a > 1, the w_i = 0 convention for a < 1).
            at_zero = (a == 1).to(acc) if isinstance(a, Tensor) else float(a == 1)
            # the a q p/r term is 0 where a = 0, never 0 * (p/r) (which is NaN if r were subnormal)
            nonzero_a = a != 0
            need_alpha = need_alpha and isinstance(alpha, Tensor)
            if need_x:
                coef_p, coef_p_over_r = g_over_den * (a + 1), g_over_den * a * q
            alpha_sum = torch.zeros_like(g_over_den) if need_alpha else None
            for rows, cols, _, _ in window_offsets(window, out_h, out_w):
                r = _unit_ratio(xp[..., rows, cols], inv_m, zero)
                p = r.pow(a)
                positive = r > 0
                if need_alpha:
                    # sum_i p_i (r_i - q) ln r_i, with 0 * ln 0 := 0
                    alpha_sum.add_(torch.where(positive, p * (r - q) * torch.log(r), 0.0))
                if need_x:
                    # g * w_i * ((a+1) - a q / r_i), with w_i = p_i / den
                    p_over_r = torch.where(positive & nonzero_a, p / r, at_zero)  # at_zero is 0 where a = 0
                    grad_xp[..., rows, cols] += p.mul_(coef_p).sub_(p_over_r.mul_(coef_p_over_r))
            grad_x = None
            if need_x:
                ph, pw = window.padding
                grad_x = grad_xp[..., ph : ph + height, pw : pw + width].to(x.dtype)
            grad_alpha = None
            if need_alpha:
                grad_alpha = alpha_sum.mul_(g_over_den).mul_(m)
                grad_alpha = grad_alpha.sum_to_size(ctx.alpha_shape).to(alpha.dtype)
        return grad_x, grad_alpha, None, None
