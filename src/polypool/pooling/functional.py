"""P-pooling (Wei et al., CVPR 2019): the exact, numerically stable reference op.

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
* Negative and non-finite inputs: a window with a negative element is shifted by its own minimum, pooled and
  shifted back; +-inf and NaN give the formula's limits (+inf: +inf; NaN: NaN; -inf: left out at a > 0).
  Each window's output depends on that window only (:mod:`.signed`, which computes those windows; the authors'
  code shifts whole maps, which agrees on the ReLU outputs the paper pools). ``check=True`` raises on non-finite
  inputs instead.
* ``alpha=float("inf")`` is max pooling (the a -> inf limit), in every backend.
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import torch
from torch import Tensor

from . import cpu_fused, custom_ops, triton_fused
from .fused_interface import NegativeInput
from .geometry import IntOrPair, Window, overhang_mask, pad_window_input, window_max, window_offsets
from .signed import signed_p_pool2d, window_max_pool

Alpha = Union[float, Tensor]
Backend = Literal["auto", "reference", "cpu_fused", "triton"]
BACKENDS = ("auto", "reference", "cpu_fused", "triton")

__all__ = ["p_pool2d", "alpha_shape_error", "nonnegative_finite"]


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
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


class _PPool2d(torch.autograd.Function):
    """Forward and analytic backward of P-pooling on a non-negative input."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Alpha, window: Window, include_pad: bool = True):
        height, width = x.shape[-2:]
        out_h, out_w = window.output_size(height, width)
        acc = _accumulation_dtype(x.dtype)
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
        acc = _accumulation_dtype(x.dtype)
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
            nonzero_a = (a != 0) if isinstance(a, Tensor) else a != 0
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
                grad_x = grad_xp[..., ph:ph + height, pw:pw + width].to(x.dtype)
            grad_alpha = None
            if need_alpha:
                grad_alpha = alpha_sum.mul_(g_over_den).mul_(m)
                grad_alpha = grad_alpha.sum_to_size(ctx.alpha_shape).to(alpha.dtype)
        return grad_x, grad_alpha, None, None


def alpha_shape_error(alpha: Tensor, out_shape: torch.Size) -> Optional[str]:
    """A message if ``alpha`` does not broadcast to the output shape ``(N, C, H_out, W_out)``, else None."""
    try:
        if torch.broadcast_shapes(alpha.shape, out_shape) == out_shape:
            return None
    except RuntimeError:
        pass
    return (
        f"alpha of shape {tuple(alpha.shape)} does not broadcast to the output shape {tuple(out_shape)}: use a "
        f"scalar (one per layer), shape (C, 1, 1) (one per channel), or (N, C, H_out, W_out) (dense)"
    )


def nonnegative_finite(x: Tensor) -> bool:
    """Whether every element of x is finite and >= 0 (one pass, one device sync): then the paper's formula applies
    as it stands and any backend serves x; else :func:`p_pool2d` takes the windows that hold a negative or
    non-finite element through :func:`~polypool.pooling.signed.signed_p_pool2d`."""
    low, high = torch.aminmax(x)  # NaN propagates: then both comparisons are False
    return bool((low >= 0) & (high < torch.inf))


def _with_signed_windows(x: Tensor, alpha: Alpha, window: Window, include_pad: bool, pool) -> Tensor:
    """``pool`` (a backend that assumes finite x >= 0) on the windows without a negative or non-finite element,
    the signed path on the others: each window's output depends on that window only (module docstring)."""
    y_signed, needed = signed_p_pool2d(x, alpha, window, include_pad)
    # the backend reads the other windows' values as they are; what it makes of the replaced ones is not used
    y = pool(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0))
    return torch.where(needed, y_signed, y)


def p_pool2d(
    input: Tensor,
    alpha: Alpha,
    kernel_size: IntOrPair,
    stride: Optional[IntOrPair] = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    check: bool = False,
    backend: Backend = "auto",
    input_nonnegative: bool = False,
    count_include_pad: bool = True,
) -> Tensor:
    """P-pooling over 2-D windows: ``sum x^(alpha+1) / sum x^alpha`` per window.

    Args:
        input: ``(N, C, H, W)`` or ``(C, H, W)`` floating tensor (fp16, bf16, fp32 or fp64, any memory format).
        alpha: the exponent, >= 0. A Python float (fixed; ``float("inf")`` is max pooling), or a finite tensor
            broadcasting to the output ``(N, C, H_out, W_out)``: a scalar per layer, ``(C, 1, 1)`` per channel, or
            dense (``check=True`` verifies a tensor's values).
        kernel_size, stride, padding, ceil_mode: as in ``F.max_pool2d``; the windows and output shape are
            exactly max_pool2d's. ``stride`` defaults to ``kernel_size``.
        check: raise a ``ValueError`` on NaN/Inf in ``input`` or a negative/NaN/Inf tensor ``alpha`` (one device
            sync). Off by default: NaN/Inf inputs then give the formula's limits (module docstring).
        backend: ``"auto"`` (the fused kernel where one serves the input, else the reference),
            ``"reference"`` (the pure-torch op in this file), ``"cpu_fused"`` (the C++ kernel; fp32 CPU only),
            or ``"triton"`` (the Triton kernels; fp32/fp16/bf16 on CUDA, or on CPU with ``TRITON_INTERPRET=1``).
        input_nonnegative: the caller guarantees a finite ``input >= 0`` (it is a ReLU's output: ``swap_pooling``
            sets this on the layers it puts after a ReLU). Skips the check for negative and non-finite inputs,
            which costs a device sync per call on the GPU (and so prevents CUDA-graph capture). A negative input
            then gives wrong results, and +inf NaN.
        count_include_pad: as in ``avg_pool2d``: whether the zero padding is part of each window (the default). For
            alpha > 0 a padded zero adds nothing to either sum, so this matters at alpha = 0, in all-zero windows,
            and in windows with a negative element (shifted up by their minimum, where a padded zero counts).

    Returns:
        ``(N, C, H_out, W_out)`` in the input's dtype, computed in fp32 (fp64 for fp64 inputs).
    """
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"p_pool2d expects a floating-point tensor, got {type(input).__name__}"
                        f"{'' if not isinstance(input, Tensor) else ' of dtype ' + str(input.dtype)}")
    if input.dim() == 3:
        alpha_3d = alpha.unsqueeze(0) if isinstance(alpha, Tensor) and alpha.dim() == 4 else alpha
        return p_pool2d(input.unsqueeze(0), alpha_3d, kernel_size, stride, padding, ceil_mode, check,
                        backend, input_nonnegative, count_include_pad).squeeze(0)
    if input.dim() != 4:
        raise ValueError(f"p_pool2d expects a (N, C, H, W) or (C, H, W) input, got shape {tuple(input.shape)}")
    window = Window.make(kernel_size, stride, padding, ceil_mode)
    out_shape = torch.Size((*input.shape[:2], *window.output_size(*input.shape[-2:])))
    if isinstance(alpha, Tensor):
        message = alpha_shape_error(alpha, out_shape)
        if message:
            raise ValueError(message)
        if not alpha.is_floating_point():
            alpha = alpha.to(input.dtype)
    else:
        alpha = float(alpha)
        if not alpha >= 0:  # also catches NaN
            raise ValueError(f"alpha must be >= 0 (0 is average pooling, large is max pooling), got {alpha}")
    if check:
        if not bool(torch.isfinite(input).all()):
            raise ValueError(
                f"p_pool2d got NaN or Inf in its input of shape {tuple(input.shape)}: fix the layer before the "
                f"pooling (lower the learning rate, check the data), or pass check=False to propagate them"
            )
        if isinstance(alpha, Tensor) and not bool(((alpha >= 0) & (alpha < math.inf)).all()):
            raise ValueError("alpha must be >= 0 and finite everywhere in a tensor alpha (got a negative, NaN or inf "
                             "value): clamp it to [0, a finite maximum]; a float alpha=float('inf') is max pooling")
    include_pad = bool(count_include_pad) or window.padding == (0, 0)  # without padding the flag changes nothing
    if not isinstance(alpha, Tensor) and alpha == math.inf:  # the a -> inf limit, in every backend
        return window_max_pool(input, window, include_pad)
    if (torch.compiler.is_compiling() and not torch.compiler.is_exporting() and backend in BACKENDS
            and include_pad):
        # torch.compile: the fused kernels as torch.library ops, which Inductor calls (torch.export keeps the
        # reference op's plain torch ops, which any runtime can run). A graph cannot branch on the data: without
        # the caller's word that x >= 0, every window also goes through the signed path.
        op = custom_ops.serves(input, alpha, backend)
        if op is not None:
            def compiled(x):
                return custom_ops.compiled_p_pool2d(x, alpha, window, op)
            return compiled(input) if input_nonnegative else _with_signed_windows(
                input, alpha, window, include_pad, compiled)
    function = _select_backend(backend, input, alpha)
    if function is _PPool2d:
        def reference(x):
            return _PPool2d.apply(x, alpha, window, include_pad)
        if input_nonnegative or (not torch.compiler.is_compiling() and nonnegative_finite(input)):
            return reference(input)
        return _with_signed_windows(input, alpha, window, include_pad, reference)
    # a fused kernel checks for negatives as it reads x (no pass of its own), and writes the backward's state only
    # when a gradient can be asked for; +inf and NaN show in its output
    need_grad = torch.is_grad_enabled() and (
        input.requires_grad or (isinstance(alpha, Tensor) and alpha.requires_grad))
    check_negative = not input_nonnegative
    if function is triton_fused.PPool2dTriton:  # with its safety nets: a failure falls back to the reference op
        def run(x):
            return triton_fused.apply(x, alpha, window, need_grad, explicit=backend == "triton",
                                      check_negative=check_negative, include_pad=include_pad)

        def run_nonnegative(x):  # x >= 0 and finite: the reference op answers if Triton fails
            try:
                return run(x)
            except triton_fused.TritonFailure:
                return _PPool2d.apply(x, alpha, window, include_pad)
    else:
        def run(x):
            return function.apply(x, alpha, window, need_grad, check_negative, include_pad)
        run_nonnegative = run
    try:
        y = run(input)
    except NegativeInput:
        return _with_signed_windows(input, alpha, window, include_pad, run_nonnegative)
    except triton_fused.TritonFailure:  # warned once; the path is off from now on
        return p_pool2d(input, alpha, kernel_size, stride, padding, ceil_mode,  # auto: no Triton any more
                        input_nonnegative=input_nonnegative, count_include_pad=count_include_pad)
    if check_negative and not math.isfinite(y.amax()):  # +inf or NaN in x (y >= 0 here)
        return _with_signed_windows(input, alpha, window, include_pad, run_nonnegative)
    return y


def _select_backend(backend: Backend, x: Tensor, alpha: Alpha):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference" or torch.compiler.is_compiling():
        return _PPool2d  # traced (torch.export, or no fused op serves): the reference op's torch ops
    if backend in ("auto", "triton") and triton_fused.supports(x, alpha, allow_cpu=backend == "triton"):
        return triton_fused.PPool2dTriton
    if backend in ("auto", "cpu_fused") and cpu_fused.supports(x, alpha):
        return cpu_fused.PPool2dCPU
    if backend == "cpu_fused":
        raise ValueError(f"backend='cpu_fused' serves fp32 CPU tensors with a built kernel; got a {x.dtype} tensor on "
                         f"{x.device} (kernel enabled: {cpu_fused.enabled()})")
    if backend == "triton":
        raise ValueError(
            f"backend='triton' serves fp32/fp16/bf16 CUDA tensors (CPU ones with TRITON_INTERPRET=1) with Triton "
            f"installed; got a {x.dtype} tensor on {x.device} (Triton installed: {triton_fused.kernels() is not None}, "
            f"POLYPOOL_TRITON enabled: {triton_fused.enabled()}, interpreter: {triton_fused.interpreting()}, "
            f"switched off after a failure: {triton_fused.failure() or 'no'})")
    return _PPool2d
