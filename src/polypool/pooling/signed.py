"""P-pooling of any real input: negative values, +-inf and NaN, each window on its own.

The paper's formula, ``sum x^(a+1) / sum x^a``, is defined for x >= 0 (the ReLU outputs the paper pools). For a
window with a negative element we shift *that window* by its minimum s (s = min(0, window min)), pool, and shift
back:

    y_j = s_j + P(x - s_j)  =  m_j - sum_i w_i (m_j - x_i),   w_i = r_i^a / sum_k r_k^a,   r_i = (x_i - s_j) / (m_j - s_j)

with m_j the window max. A window without negatives has s_j = 0: the paper's formula, unchanged. So:

* a window's output depends on that window only (the authors' code shifts the whole (sample, channel) map by its
  minimum, so one outlier moved every window of its map: the authors' rule and this one agree on ReLU outputs,
  the only inputs the paper's networks pool);
* a = 0 is ``avg_pool2d`` and a -> inf is the window max for any input, padding zeros included in the window as
  in ``avg_pool2d(count_include_pad=True)``;
* the second form keeps the precision of the window's own values: with x = [-1e8, 1, 2, 3] and a = 30 it gives the
  real-number result (2.0; the window minimum has weight 0 and the others equal weights), where s + P(x - s) in fp32
  would lose them in the rounding of x - s.

Non-finite inputs give the formula's limits, and max_pool2d's results where the formula has no limit:

* NaN anywhere in a window: NaN (as every torch pooling);
* +inf in a window: +inf (the limit for every a; ``max_pool2d`` and ``avg_pool2d`` agree), except at a = 0 with a
  -inf in the same window: NaN, as ``avg_pool2d``;
* -inf: at a = 0, -inf (``avg_pool2d``); at a > 0 it has weight 0, like every window minimum (r = 0), and the
  shift s is taken over the window's other elements, so the window pools its finite values; a window of -inf only
  gives -inf, as ``max_pool2d``.

This path is plain torch ops (autograd differentiates it, through the shift and the window max and min as well);
it is slower and keeps more for the backward than the fused kernels, which serve the inputs they can (finite,
>= 0) and hand the others here (:func:`polypool.pooling.p_pool2d`).
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import Window, overhang_mask, pad_window_input, window_offsets

__all__ = ["signed_p_pool2d"]


def _masked_views(x: Tensor, window: Window, include_pad: bool):
    """Yield (view, in_window) for every window offset: the strided view of the zero-padded x, and a bool mask of
    the outputs whose window holds that offset (None: all of them)."""
    height, width = x.shape[-2:]
    out_h, out_w = window.output_size(height, width)
    xp = pad_window_input(x, window)
    for rows, cols, di, dj in window_offsets(window, out_h, out_w):
        mask = overhang_mask(window, height, width, out_h, out_w, di, dj, xp, include_pad)
        yield xp[..., rows, cols], None if mask is None else mask.bool()


def window_max_pool(x: Tensor, window: Window, include_pad: bool = True) -> Tensor:
    """The a -> inf limit of P-pooling: the max over each window's elements, the zero padding among them when
    ``include_pad`` (then ``max_pool2d`` on x >= 0, else ``max(max_pool2d, 0)`` where a window holds padding)."""
    m = None
    for v, in_window in _masked_views(x, window, include_pad):
        if in_window is not None:
            v = torch.where(in_window, v, -torch.inf)
        m = v if m is None else torch.maximum(m, v)
    return m


def _flags(xa: Tensor, window: Window, include_pad: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per window: (holds a NaN, holds +inf, holds -inf)."""
    has = [None, None, None]
    for v, in_window in _masked_views(xa, window, include_pad):
        for k, flag in enumerate((torch.isnan(v), v == torch.inf, v == -torch.inf)):
            flag = flag if in_window is None else flag & in_window
            has[k] = flag if has[k] is None else has[k] | flag
    return has[0], has[1], has[2]


def signed_p_pool2d(
    x: Tensor, alpha: Union[float, Tensor], window: Window, include_pad: bool = True
) -> tuple[Tensor, Tensor]:
    """P-pooling of a real x (any sign, +-inf, NaN), window by window (module docstring), and a bool mask of the
    windows that needed this path: those with a negative or a non-finite element. ``alpha`` is a float or a tensor
    broadcasting to the output ``(N, C, H_out, W_out)``, finite and >= 0."""
    if torch.compiler.is_compiling():
        return signed_p_pool2d_unfolded(x, alpha, window, include_pad)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        xa = x.to(acc)
        a = (
            alpha.to(device=x.device, dtype=acc)
            if isinstance(alpha, Tensor)
            else torch.tensor(float(alpha), dtype=acc, device=x.device)
        )
        # The arithmetic runs on the finite elements only (non-finite ones read as 0, take no gradient and are
        # left out of the sums); the non-finite ones set their windows' outputs through the flags at the end.
        low, high = torch.aminmax(xa.detach())
        all_finite = bool((low > -torch.inf) & (high < torch.inf))
        finite = None if all_finite else torch.isfinite(xa)
        x_f = xa if all_finite else torch.where(finite, xa, 0.0)
        # m and s: the max and min(0, min) of each window's finite elements, by running maximum/minimum over the
        # window offsets (several times faster than max_pool2d on the CPU). A padded or overhanging zero cannot
        # lower min(0, min); it may raise the max only where it is an element of the window.
        # (the non-finite mask is padded with False: a padded zero is a finite element)
        nonfinite_views = None if all_finite else [v for v, _ in _masked_views(~finite, window, include_pad)]
        m = s = None
        for k, (v, in_window) in enumerate(_masked_views(x_f, window, include_pad)):
            v_max = v if all_finite else torch.where(nonfinite_views[k], -torch.inf, v)
            if in_window is not None:
                v_max = torch.where(in_window, v_max, -torch.inf)
            m = v_max if m is None else torch.maximum(m, v_max)
            s = v if s is None else torch.minimum(s, v)
        no_finite = m == -torch.inf  # a window of -inf/+inf/NaN only: its output is set by the flags
        m = torch.where(no_finite, 0.0, m)
        s = torch.where(no_finite, 0.0, s).clamp(max=0)
        span = m - s
        # r_i = (x_i - s) / span. Where the finite elements are all equal, or within
        # sqrt(tiny) of each other (then y = m to that precision), r := 1: 1/span^2, in the backward, stays finite
        # (else 0 * inf = NaN would reach the gradients of windows whose output the backends computed)
        tiny = torch.finfo(acc).tiny
        flat = span < tiny**0.5
        inv_span = torch.where(flat, 0.0, 1.0 / torch.where(flat, 1.0, span))
        flat_one = flat.to(acc)
        zero_pow = torch.zeros_like(m).pow(a)  # 0^a: 1 at a = 0 (avg_pool2d counts every element), else 0
        den = torch.zeros_like(m)
        num = torch.zeros_like(m)  # sum_i p_i (m - x_i)
        for k, (v, in_window) in enumerate(_masked_views(x_f, window, include_pad)):
            gap = m - v
            # (x - s) / span: exactly 0 at the window's minimum, whose weight (and its ln r in dy/dalpha) must
            # vanish; 1 where the window is flat
            r = torch.addcmul(flat_one, v - s, inv_span)
            use = in_window
            if not all_finite:
                use = ~nonfinite_views[k] if in_window is None else ~nonfinite_views[k] & in_window
            if use is not None:  # a tap outside the window (a left-out zero can lie far above s): r := 0, not r^a = inf
                r = torch.where(use, r, 0.0)
            # r below the smallest normal number counts as 0, as in the reference op: r^(a-1) stays finite
            positive = r >= tiny
            p = torch.where(positive, torch.where(positive, r, 1.0).pow(a), zero_pow)  # no inf * 0 at r = 0
            if use is not None:
                p = torch.where(use, p, 0.0)
            den = den + p
            num = torch.addcmul(num, p, gap)
        y = m - num / torch.where(den > 0, den, 1.0)  # den >= 1 (the max has r = 1) where a finite element is
        needed = s < 0
        if not all_finite:
            has_nan, has_pinf, has_ninf = _flags(xa.detach(), window, include_pad)
            at_zero = (a == 0).expand_as(y)
            y = torch.where(has_ninf & (at_zero | no_finite), -torch.inf, y)  # avg_pool2d's -inf; all -inf: max's
            y = torch.where(has_pinf, torch.where(at_zero & has_ninf, torch.nan, torch.inf), y)
            y = torch.where(has_nan, torch.nan, y)
            needed = needed | has_nan | has_pinf | has_ninf
    return y.to(x.dtype), needed


def signed_p_pool2d_unfolded(
    x: Tensor, alpha: Union[float, Tensor], window: Window, include_pad: bool = True
) -> tuple[Tensor, Tensor]:
    """:func:`signed_p_pool2d`'s arithmetic on the unfolded windows ``(N, C, kh*kw, H_out, W_out)``, without a
    branch on the data: what ``torch.compile`` and ``torch.export`` trace (a few dozen ops, where the offset loop
    would put a few hundred in the graph). It holds kh*kw/stride^2 copies of x, so eager calls use the loop."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    height, width = x.shape[-2:]
    out_h, out_w = window.output_size(height, width)
    taps = window.kernel[0] * window.kernel[1]
    tiny = torch.finfo(acc).tiny

    def unfold(t: Tensor) -> Tensor:  # (..., H', W') -> (..., taps, H_out, W_out)
        cols = F.unfold(t.reshape(-1, 1, *t.shape[-2:]), window.kernel, stride=window.stride)
        return cols.view(*t.shape[:-2], taps, out_h, out_w)

    with torch.autocast(device_type=x.device.type, enabled=False):
        xa = x.to(acc)
        a = (
            alpha.to(device=x.device, dtype=acc)
            if isinstance(alpha, Tensor)
            else torch.tensor(float(alpha), dtype=acc, device=x.device)
        )
        if a.dim() >= 2:  # (..., H_out, W_out) -> (..., 1, H_out, W_out): one value for the window's taps
            a = a.unsqueeze(-3)
        # which taps are elements of their window: the padding when include_pad, the ceil overhang never
        (ph, pw), (oh, ow) = window.padding, window.overhang(height, width)
        ones = torch.ones(1, 1, height, width, dtype=acc, device=x.device)
        if include_pad:
            ones = F.pad(F.pad(ones, (pw, pw, ph, ph), value=1.0), (0, ow, 0, oh))
        else:
            ones = pad_window_input(ones, window)
        valid = unfold(ones)[0, 0] > 0
        raw = unfold(pad_window_input(xa, window))
        finite = torch.isfinite(raw)
        use = finite & valid
        v = torch.where(finite, raw, 0.0)
        m = torch.where(use, v, -torch.inf).amax(dim=-3)
        s = torch.where(use, v, torch.inf).amin(dim=-3)
        no_finite = m == -torch.inf
        m = torch.where(no_finite, 0.0, m)
        s = torch.where(no_finite, 0.0, s).clamp(max=0)
        span = m - s
        flat = span < tiny**0.5
        inv_span = torch.where(flat, 0.0, 1.0 / torch.where(flat, 1.0, span))
        gap = m.unsqueeze(-3) - v
        r = flat.to(acc).unsqueeze(-3) + (v - s.unsqueeze(-3)) * inv_span.unsqueeze(-3)
        r = torch.where(use, r, 0.0)  # a tap outside the window: r := 0, not r^a = inf
        positive = r >= tiny
        zero_pow = torch.zeros((), dtype=acc, device=x.device).pow(a)
        p = torch.where(positive, torch.where(positive, r, 1.0).pow(a), zero_pow)
        p = torch.where(use, p, 0.0)
        den = p.sum(dim=-3)
        y = m - (p * gap).sum(dim=-3) / torch.where(den > 0, den, 1.0)
        has_nan = (torch.isnan(raw) & valid).any(dim=-3)
        has_pinf = ((raw == torch.inf) & valid).any(dim=-3)
        has_ninf = ((raw == -torch.inf) & valid).any(dim=-3)
        at_zero = (a.squeeze(-3) if a.dim() >= 3 else a) == 0
        y = torch.where(has_ninf & (at_zero | no_finite), -torch.inf, y)
        y = torch.where(has_pinf, torch.where(at_zero & has_ninf, torch.nan, torch.inf), y)
        y = torch.where(has_nan, torch.nan, y)
        needed = has_nan | has_pinf | has_ninf | (s < 0)
    return y.to(x.dtype), needed
