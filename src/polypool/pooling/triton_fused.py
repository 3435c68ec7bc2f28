"""The fused GPU path of ``p_pool2d``: the Triton kernels of ``triton_kernels.py`` behind an autograd Function.

``p_pool2d`` uses it by default for fp32/fp16/bf16 CUDA tensors when Triton imports; everything else goes to the
C++ CPU kernel or the reference op. With ``TRITON_INTERPRET=1`` set before the first use, ``backend="triton"``
also runs it on CPU tensors through Triton's interpreter (slow; it is how the tests check it without a GPU).

``POLYPOOL_TRITON``: ``0`` turns the path off; ``strict`` makes every failure of it raise (for tests and
benchmarks); anything else (the default) makes the default path safe on a machine where Triton cannot work:

* The first launch compiles the kernels, builds a C launcher (a C compiler is needed), loads libcuda and writes
  Triton's cache. If that or any later launch fails, ``p_pool2d`` warns once (with the cause, and the variable) and
  uses the reference op from then on in this process. A failure in a backward is answered by the reference op's
  backward for that call.
* The first call for each (device, dtype, alpha layout) first runs the kernels on a tiny input, forward and
  backward, against the reference op; a mismatch is such a failure too. The fused dense-alpha branch
  (``dense_apply``) is one more layout: its kernels are checked against the unfused branch and the reference op.

An explicit ``backend="triton"`` never falls back: it raises.

Saved for backward (only when a gradient can be asked for): x itself (no copy, whatever its layout), the
denominator in fp32, and y for fp32 inputs or q = y/m in fp32 for fp16/bf16 (the backward's (a+1) - a q/r needs q
to fp32 precision). Not the window max (the backward recomputes it from the window it reads anyway), nor, for the
fused branch, alpha: beyond x and y, 4 bytes per output for fp32 (0.25x the input at 2x2/2, 1x at stride 1), 8 for
fp16/bf16 (1x and 4x). A channels_last x gets channels_last y and dx, as from ``max_pool2d``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from typing import Optional

import torch
from torch import Tensor

from .dense_branch import branch_grads, branch_tensors, dense_branch_alpha, scale_gradient
from .fused_interface import (
    NegativeInput,
    alpha_grad_to_shape,
    alpha_is_dense,
    is_channels_last,
    kernel_alpha,
    raise_if_negative,
)
from .geometry import Window
from .reference import PPool2dReference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
NUM_WARPS = 4
BLOCK = 1024  # the largest block that block_size() picks per call (kept as a constant for tools that print it)
INT64_FROM = 2**31 - 1 - 2 * 1024  # index arithmetic in int64 from this many elements (any tensor, any span)


def mode() -> str:
    """``POLYPOOL_TRITON``: "off" (0), "strict", or "on" (the default: fall back to the reference on failure)."""
    value = os.environ.get("POLYPOOL_TRITON", "1").strip().lower()
    return "off" if value == "0" else "strict" if value == "strict" else "on"


def enabled() -> bool:
    return mode() != "off"


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.cache
def kernels():
    """The Triton kernels module, or None when Triton is not installed. Imported on first use: ``triton.jit``
    reads ``TRITON_INTERPRET`` when the module is imported, so set it before."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    from . import triton_kernels

    return triton_kernels


# ------------------------------------------------------------------------------------------------ safety nets


class TritonFailure(RuntimeError):
    """The Triton path failed (compile, launch, or the first-result check) and has been switched off for this
    process; ``p_pool2d`` answers the call with the reference op."""


_lock = threading.RLock()
_failure: Optional[str] = None  # why the path is off for this process (after a warning), or None
_checked: set = set()  # (device, dtype, dense or DENSE_BRANCH) whose first result matched the reference
DENSE_BRANCH = "dense branch"  # the alpha layout of the fused dense-alpha branch in _checked


def failure() -> Optional[str]:
    """Why the Triton path was switched off in this process, or None."""
    return _failure


def reset() -> None:
    """Forget a recorded failure and the first-result checks (for tests)."""
    global _failure
    with _lock:
        _failure = None
        _checked.clear()


def _record_failure(cause: str) -> None:
    global _failure
    with _lock:
        if _failure is not None:
            return
        _failure = cause
    warnings.warn(
        f"polypool: the Triton P-pooling kernels failed, so p_pool2d uses the (slower) reference op from now on in "
        f"this process. Set POLYPOOL_TRITON=0 to skip the Triton path, or POLYPOOL_TRITON=strict to raise instead. "
        f"Cause: {cause[:800]}",
        RuntimeWarning,
        stacklevel=4,
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip()


def supports(x: Tensor, alpha, allow_cpu: bool = False) -> bool:
    """Whether the Triton path serves this call: fp32/16/bf16 on CUDA (or on CPU through the interpreter when
    ``allow_cpu``), Triton installed, ``POLYPOOL_TRITON`` not 0, and no failure recorded in this process."""
    if x.dtype not in DTYPES or not enabled() or _failure is not None:
        return False
    on_device = x.is_cuda or (allow_cpu and x.device.type == "cpu" and interpreting())
    if not on_device:
        return False
    if isinstance(alpha, Tensor) and alpha.device != x.device:
        return False
    return kernels() is not None


def apply(
    x: Tensor,
    alpha,
    window: Window,
    need_grad: bool,
    explicit: bool,
    check_negative: bool = True,
    include_pad: bool = True,
) -> Tensor:
    """``PPool2dTriton`` with the safety nets: the first-result check, and on any failure (but NegativeInput) a
    warning and TritonFailure, unless ``explicit`` (``backend="triton"``) or strict mode, which raise it as is."""

    def launch():
        _check_first_result(x, alpha, window)
        return PPool2dTriton.apply(x, alpha, window, need_grad, explicit, check_negative, include_pad)

    return _guarded(launch, explicit)


def _guarded(launch, explicit: bool):
    """``launch()``, and on any failure but NegativeInput: a warning once, the Triton path off, TritonFailure (the
    caller then runs the reference op); ``explicit`` (``backend="triton"``) or strict mode raise the failure as is."""
    try:
        return launch()
    except NegativeInput:
        raise
    except Exception as error:
        if explicit or mode() == "strict":
            raise
        _record_failure(_describe(error))
        raise TritonFailure(_describe(error)) from error


def _check_first_result(x: Tensor, alpha, window: Window) -> None:
    """Once per (device, dtype, alpha layout): the kernels' forward and gradients on a tiny input against the
    reference op's; a RuntimeError on a mismatch. Skipped while a CUDA graph is being captured (it syncs)."""
    dense = alpha_is_dense(alpha)
    _check_once(
        (x.device, x.dtype, dense),
        f"{'dense' if dense else 'per-plane'} alpha",
        lambda: _first_result_mismatch(x.device, x.dtype, dense, alpha, window),
    )


def _check_dense_first_result(
    x: Tensor, window: Window, alpha_range, input_scale: float, grad_scale: float, include_pad: bool
) -> None:
    """``_check_first_result`` for the fused dense-alpha branch (its own kernels: the forward computes alpha, the
    backward sums the branch's gradients), against the unfused branch and the reference op."""
    _check_once(
        (x.device, x.dtype, DENSE_BRANCH),
        "fused dense-alpha branch",
        lambda: _dense_first_result_mismatch(
            x.device, x.dtype, window, alpha_range, input_scale, grad_scale, include_pad
        ),
    )


def _check_once(key, layout: str, mismatch_of) -> None:
    """``mismatch_of()`` once per key (after a match); a RuntimeError naming the layout on a mismatch."""
    if key in _checked:
        return
    device, dtype = key[:2]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    with _lock:
        if key in _checked:
            return
        mismatch = mismatch_of()
        if mismatch:
            raise RuntimeError(
                f"the first result of the Triton kernels ({dtype}, {layout}, {device}) does not "
                f"match the reference op: {mismatch}"
            )
        _checked.add(key)


def _first_result_input(window: Window, dtype, dense_alpha: bool):
    """The tiny check's x (fp32 holding dtype's values), alpha and output gradient: ReLU zeros, an all-zero window,
    alpha = 0 (average pooling) and 1 (r^(a-1) at r = 0 is 1)."""
    (kh, kw), (sh, sw) = window.kernel, window.stride
    generator = torch.Generator().manual_seed(0)
    height, width = kh + 3 * sh, kw + 4 * sw + 1
    x = torch.rand((2, 3, height, width), generator=generator)
    x[x < 0.2] = 0  # ReLU zeros
    x[0, 0, :kh, :kw] = 0  # an all-zero window
    out_h, out_w = window.output_size(height, width)
    a = torch.rand((2, 3, out_h, out_w) if dense_alpha else (3, 1, 1), generator=generator) * 20
    a.view(-1)[:2] = torch.tensor([0.0, 1.0])  # average pooling; r^(a-1) at r = 0 is 1
    x = x.to(dtype).float()  # the values the kernels see
    g = torch.rand((2, 3, out_h, out_w), generator=generator)
    return x, a, g


FIRST_RESULT_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _mismatch(names, got_all, want_all, dtype) -> Optional[str]:
    """The first of got against want (fp32, on the CPU) outside the dtype's tolerance, described; or None."""
    rtol = FIRST_RESULT_RTOL[dtype]
    for name, got, want in zip(names, got_all, want_all):
        scale = want.abs().max().item()
        if not torch.allclose(got, want, rtol=rtol, atol=rtol * scale + 1e-6):
            error = (got - want).abs().max().item()
            return f"{name} differs by up to {error:.3g} (scale {scale:.3g})"
    return None


def _first_result_mismatch(device, dtype, dense: bool, alpha, window: Window) -> Optional[str]:

    x, a, g = _first_result_input(window, dtype, dense)
    alpha_dtype = alpha.dtype if isinstance(alpha, Tensor) else torch.float32
    results = []
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for function, xv, gv, extra in (
            (PPool2dTriton, x.to(device, dtype), g.to(device, dtype), (True, True)),
            (PPool2dReference, x, g, ()),
        ):
            xv = xv.clone().requires_grad_(True)
            av = a.to(device if extra else "cpu", alpha_dtype).requires_grad_(True)
            y = function.apply(xv, av, window, *extra)
            grads = torch.autograd.grad(y, (xv, av), gv)
            results.append([t.detach().float().cpu() for t in (y, *grads)])
    return _mismatch(("y", "dx", "dalpha"), *results, dtype)


def _dense_first_result_mismatch(
    device, dtype, window: Window, alpha_range, input_scale: float, grad_scale: float, include_pad: bool
) -> Optional[str]:

    x, _, g = _first_result_input(window, dtype, dense_alpha=False)
    lo, hi = (float(v) for v in alpha_range)
    channels, (kh, kw) = x.shape[1], window.kernel
    generator = torch.Generator().manual_seed(1)
    # conv taps of both signs (PReLU's negative side used), weights and biases that put alpha on both sides of the
    # clamp and inside it (its gradient mask used)
    params = [
        torch.randn(channels, 1, kh, kw, generator=generator),
        torch.rand(channels, generator=generator),
        torch.randn(channels, 1, 1, 1, generator=generator) * (hi - lo),
        lo + torch.rand(channels, generator=generator) * (hi - lo),
    ]
    names = ("y", "alpha", "dx", "dconv", "dslope", "dweight", "dbias")
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        xv = x.to(device, dtype).requires_grad_(True)
        pv = [p.to(device).requires_grad_(True) for p in params]
        y, alpha = DensePPool2dTriton.apply(
            xv, *pv, window, (lo, hi), input_scale, grad_scale, include_pad, True, True, True
        )  # need_grad, check_negative, explicit (no fallback)
        got = [y, alpha, *torch.autograd.grad(y, (xv, *pv), g.to(device, dtype))]
        xr = x.clone().requires_grad_(True)
        pr = [p.clone().requires_grad_(True) for p in params]
        alpha_r = dense_branch_alpha(xr, *pr, window, (lo, hi), input_scale)
        yr = PPool2dReference.apply(xr, scale_gradient(alpha_r, grad_scale), window, include_pad)
        want = [yr, alpha_r, *torch.autograd.grad(yr, (xr, *pr), g)]
    return _mismatch(names, *([t.detach().float().cpu() for t in ts] for ts in (got, want)), dtype)


# ------------------------------------------------------------------------------------------------ launches


def _alloc(shape, dtype: torch.dtype, device: torch.device, channels_last: bool = False) -> Tensor:
    """Every buffer the kernels fill (each element written once; the tests poison this to check that)."""
    return torch.empty(
        shape,
        dtype=dtype,
        device=device,
        memory_format=torch.channels_last if channels_last else torch.contiguous_format,
    )


def _device_guard(x: Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def block_size(total: int) -> int:
    """Elements per program: larger blocks for larger tensors (fewer programs), small ones for small tensors (enough
    programs to fill the GPU). The flat grid leaves idle lanes only in the last block."""
    return 1024 if total >= 1 << 22 else 512 if total >= 1 << 18 else 256 if total >= 1 << 14 else 128


def _span(t: Tensor) -> int:
    """The number of elements between t's first and last addressed element, plus one."""
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()) if size > 0)


def launch_args(window: Window, x: Tensor, total: int, channels_last: bool, *others: Tensor) -> dict:
    (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
    idx64 = max(total, _span(x), *(t.numel() for t in others)) > INT64_FROM
    return dict(
        KH=kh,
        KW=kw,
        SH=sh,
        SW=sw,
        PH=ph,
        PW=pw,
        CL=channels_last,
        IDX64=idx64,
        BLOCK=block_size(total),
        num_warps=NUM_WARPS,
    )


def grid(total: int, block: int) -> tuple[int]:
    return ((total + block - 1) // block,)


class PPool2dTriton(torch.autograd.Function):
    """``PPool2dReference`` of the reference op, computed by the Triton kernels; raises NegativeInput on a negative x.

    ``need_grad=False`` (``p_pool2d`` passes it under ``no_grad`` or when nothing requires a gradient): only y is
    written, not the backward's state. ``explicit``: a failure in the backward raises (else the reference op's
    backward answers it, after the warning). ``check_negative=False``: the caller guarantees x >= 0 (a ReLU's
    output), so the forward does not read back the kernel's negative flags: no device sync, and CUDA graphs can
    capture it."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        alpha,
        window: Window,
        need_grad: bool = True,
        explicit: bool = True,
        check_negative: bool = True,
        include_pad: bool = True,
    ):
        k = kernels()
        n, c, height, width = x.shape
        out_h, out_w = window.output_size(height, width)
        channels_last = is_channels_last(x)
        alpha_k, dense = kernel_alpha(alpha, n, c, out_h, out_w, x.device, channels_last=channels_last)
        save_q = x.dtype != torch.float32
        out_shape = (n, c, out_h, out_w)
        total = n * c * out_h * out_w
        y = _alloc(out_shape, x.dtype, x.device, channels_last)
        if need_grad:  # the backward's state; not the window max, which the backward recomputes
            den = _alloc(out_shape, torch.float32, x.device, channels_last)
            q = _alloc(out_shape, torch.float32, x.device, channels_last) if save_q else den  # den: a placeholder
        else:
            den = q = y  # placeholders: the kernel stores neither
        args = launch_args(window, x, total, channels_last, y)
        negative = _alloc(grid(total, args["BLOCK"]), torch.int8, x.device)
        with _device_guard(x):
            k.p_pool2d_forward_kernel[grid(total, args["BLOCK"])](
                x,
                alpha_k,
                y,
                den,
                q,
                negative,
                total,
                c,
                height,
                width,
                out_h,
                out_w,
                *x.stride(),
                DENSE=dense,
                SAVE_Q=save_q,
                STORE_STATE=need_grad,
                INCLUDE_PAD=include_pad,
                **args,
            )
        # One device sync: the reference pays it too (its shift check), without the kernel's fused pass over x.
        if check_negative:
            raise_if_negative(bool(negative.any()), x, window)
        ctx.window, ctx.dense, ctx.q_saved, ctx.explicit = window, dense, save_q, explicit
        ctx.channels_last, ctx.include_pad = channels_last, include_pad
        ctx.alpha_shape = alpha.shape if isinstance(alpha, Tensor) else None
        ctx.alpha_dtype = alpha.dtype if isinstance(alpha, Tensor) else None
        if need_grad:
            ctx.save_for_backward(x, alpha_k, den, q if save_q else y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        if not ctx.saved_tensors:
            raise RuntimeError("p_pool2d (triton) ran its forward with need_grad=False: no state for a backward")
        x, alpha_k, den, y_or_q = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0]
        need_alpha = ctx.needs_input_grad[1] and ctx.alpha_shape is not None
        try:
            grad_x, grad_map = _backward_kernels(ctx, x, alpha_k, den, y_or_q, grad_y, need_x, need_alpha)
        except Exception as error:
            if ctx.explicit or mode() == "strict":
                raise
            _record_failure(_describe(error))
            grad_x, grad_map = _reference_backward(ctx, x, alpha_k, grad_y, need_x, need_alpha)
        grad_alpha = None
        if need_alpha:
            n, c = x.shape[:2]
            grad_alpha = alpha_grad_to_shape(grad_map, ctx.dense, n, c, ctx.alpha_shape, ctx.alpha_dtype)
        return grad_x, grad_alpha, None, None, None, None, None


def _backward_kernels(ctx, x, alpha_k, den, y_or_q, grad_y, need_x: bool, need_alpha: bool):
    k = kernels()
    n, c, height, width = x.shape
    out_h, out_w = den.shape[-2:]
    channels_last = ctx.channels_last
    grad_y = grad_y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    flags = dict(DENSE=ctx.dense, Q_SAVED=ctx.q_saved)
    geometry = (c, height, width, out_h, out_w, *x.stride())
    grad_x = grad_map = None
    total_out = den.numel()
    with _device_guard(x):
        # per output, once: dx's factors (when dx is needed) and dalpha (when alpha needs a gradient)
        factors = _alloc((3, total_out), torch.float32, x.device) if need_x else den  # den: a placeholder
        partial = _alloc(den.shape, torch.float32, x.device, channels_last) if need_alpha else den
        args = launch_args(ctx.window, x, total_out, channels_last, den, factors)
        k.p_pool2d_grad_factors_kernel[grid(total_out, args["BLOCK"])](
            x,
            alpha_k,
            den,
            y_or_q,
            grad_y,
            factors,
            partial,
            total_out,
            *geometry,
            **flags,
            NEED_FACTORS=need_x,
            NEED_ALPHA=need_alpha,
            **args,
        )
        if need_x:
            total = x.numel()
            grad_x = _alloc(x.shape, x.dtype, x.device, channels_last)  # every element is written: no zero fill
            args = launch_args(ctx.window, x, total, channels_last, den, factors)
            k.p_pool2d_grad_input_kernel[grid(total, args["BLOCK"])](
                x, alpha_k, factors, grad_x, total, total_out, *geometry, DENSE=ctx.dense, **args
            )
        if need_alpha:
            grad_map = partial if ctx.dense else partial.sum(dim=(2, 3)).reshape(n * c)
    return grad_x, grad_map


def _reference_backward(ctx, x, alpha_k, grad_y, need_x: bool, need_alpha: bool):
    """The gradients by the reference op (recomputing its forward): the answer to a failed backward launch."""

    n, c = x.shape[:2]
    alpha = alpha_k if ctx.dense else alpha_k.view(n, c, 1, 1)
    with torch.enable_grad():
        xr = x.detach().requires_grad_(need_x)
        ar = alpha.detach().requires_grad_(need_alpha)
        y = PPool2dReference.apply(xr, ar, ctx.window, ctx.include_pad)
        inputs = [t for t, needed in ((xr, need_x), (ar, need_alpha)) if needed]
        grads = list(torch.autograd.grad(y, inputs, grad_y))
    grad_x = grads.pop(0) if need_x else None
    grad_map = None
    if need_alpha:
        grad_map = grads.pop(0)
        grad_map = grad_map if ctx.dense else grad_map.reshape(n * c)
    if grad_x is not None and ctx.channels_last:
        grad_x = grad_x.contiguous(memory_format=torch.channels_last)
    return grad_x, grad_map


# ------------------------------------------------------------------------------------------------ dense branch


class DensePPool2dTriton(torch.autograd.Function):
    """P-pooling with the fused dense-alpha branch (``dense_alpha.py``), by the Triton kernels; returns (y, alpha)
    with alpha not differentiable. Raises NegativeInput on a negative x (then the unfused path answers).

    The plane normaliser f = scale / (max x + 1) is one torch reduction (it must be known before any window's
    alpha); everything else is the pooling kernels': the forward sums the conv while it reads the window for its
    max, and the backward's per-output kernel recomputes the window max and alpha from the window and carries dalpha
    on into the branch's parameters (per-channel atomic sums), then the dx gather runs as for any dense alpha. Saved
    for backward: x, den and y (fp32) or q (fp16/bf16), as the C++ kernel saves: neither alpha nor the window max."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        conv_weight,
        prelu_weight,
        proj_weight,
        proj_bias,
        window: Window,
        alpha_range: tuple[float, float],
        input_scale: float,
        grad_scale: float,
        include_pad: bool,
        need_grad: bool,
        check_negative: bool = True,
        explicit: bool = True,
    ):

        k = kernels()
        n, c, height, width = x.shape
        out_h, out_w = window.output_size(height, width)
        taps = window.kernel[0] * window.kernel[1]
        kw, slope, w, b = branch_tensors(conv_weight, prelu_weight, proj_weight, proj_bias, c, taps)
        channels_last = is_channels_last(x)
        f = (float(input_scale) / (x.detach().amax(dim=(2, 3)).float() + 1.0)).reshape(n * c).contiguous()
        save_q = x.dtype != torch.float32
        out_shape = (n, c, out_h, out_w)
        total = n * c * out_h * out_w
        y = _alloc(out_shape, x.dtype, x.device, channels_last)
        alpha = _alloc(out_shape, torch.float32, x.device, channels_last)
        if need_grad:
            den = _alloc(out_shape, torch.float32, x.device, channels_last)
            q = _alloc(out_shape, torch.float32, x.device, channels_last) if save_q else den
        else:
            den = q = y
        args = launch_args(window, x, total, channels_last, y)
        negative = _alloc(grid(total, args["BLOCK"]), torch.int8, x.device)
        lo, hi = (float(v) for v in alpha_range)
        with _device_guard(x):
            k.p_pool2d_dense_forward_kernel[grid(total, args["BLOCK"])](
                x,
                kw,
                slope,
                w,
                b,
                f,
                alpha,
                y,
                den,
                q,
                negative,
                total,
                c,
                height,
                width,
                out_h,
                out_w,
                *x.stride(),
                lo,
                hi,
                SAVE_Q=save_q,
                STORE_STATE=need_grad,
                INCLUDE_PAD=include_pad,
                **args,
            )
        if check_negative:
            raise_if_negative(bool(negative.any()), x, window)
        ctx.window, ctx.q_saved, ctx.channels_last, ctx.explicit = window, save_q, channels_last, explicit
        ctx.alpha_range, ctx.grad_scale = (lo, hi), grad_scale
        ctx.input_scale, ctx.include_pad = float(input_scale), include_pad
        ctx.params = (conv_weight, prelu_weight, proj_weight, proj_bias)
        if need_grad:
            ctx.save_for_backward(x, den, q if save_q else y, f, kw, slope, w, b)
        ctx.mark_non_differentiable(alpha)
        ctx.set_materialize_grads(False)  # alpha gets no gradient: no zero tensor for it
        return y, alpha

    @staticmethod
    def backward(ctx, grad_y: Tensor, _grad_alpha):

        if not ctx.saved_tensors:
            raise RuntimeError("dense p_pool2d (triton) ran its forward without need_grad: no state for a backward")
        x, den, y_or_q, f, kw, slope, w, b = ctx.saved_tensors
        if grad_y is None:  # y took no part in the loss (grads are not materialised)
            return (None,) * 13
        k = kernels()
        window: Window = ctx.window
        _n, c, height, width = x.shape
        out_h, out_w = den.shape[-2:]
        taps = window.kernel[0] * window.kernel[1]
        channels_last = ctx.channels_last
        grad_y = grad_y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        geometry = (c, height, width, out_h, out_w, *x.stride())
        total_out = den.numel()
        need_x = ctx.needs_input_grad[0]
        lo, hi = ctx.alpha_range
        try:
            grad_x, sums = _dense_backward_kernels(
                ctx, k, x, den, y_or_q, grad_y, f, kw, slope, w, b, need_x, lo, hi, geometry, total_out, taps
            )
        except Exception as error:
            if ctx.explicit or mode() == "strict":
                raise
            _record_failure(_describe(error))
            return _dense_reference_backward(ctx, x, grad_y)
        # the kernel summed over the samples already: one row per channel, as _branch_grads sums per (n, c)
        grads = branch_grads(sums, 1, c, taps, ctx.params, ctx.grad_scale)
        grads = tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:5]))
        return grad_x, *grads, None, None, None, None, None, None, None, None


def _dense_backward_kernels(
    ctx, k, x, den, y_or_q, grad_y, f, kw, slope, w, b, need_x, lo, hi, geometry, total_out, taps
):
    window, channels_last, c = ctx.window, ctx.channels_last, x.shape[1]
    sums = torch.zeros((c, taps + 3), dtype=torch.float32, device=x.device)  # atomic per-channel sums
    grad_x = None
    with _device_guard(x):
        factors = _alloc((3, total_out), torch.float32, x.device) if need_x else den  # den: a placeholder
        # alpha, recomputed by the factors kernel for the dx kernel (a buffer of the backward only)
        alpha = _alloc(den.shape, torch.float32, x.device, channels_last) if need_x else den
        args = launch_args(window, x, total_out, channels_last, den, factors)
        k.p_pool2d_grad_factors_kernel[grid(total_out, args["BLOCK"])](
            x,
            alpha,
            den,
            y_or_q,
            grad_y,
            factors,
            sums,
            total_out,
            *geometry,
            DENSE=True,
            Q_SAVED=ctx.q_saved,
            NEED_FACTORS=need_x,
            NEED_ALPHA=True,
            BRANCH=True,
            k_ptr=kw,
            slope_ptr=slope,
            w_ptr=w,
            b_ptr=b,
            f_ptr=f,
            lo=lo,
            hi=hi,
            **args,
        )
        if need_x:
            total = x.numel()
            grad_x = _alloc(x.shape, x.dtype, x.device, channels_last)
            args = launch_args(window, x, total, channels_last, den, factors)
            k.p_pool2d_grad_input_kernel[grid(total, args["BLOCK"])](
                x, alpha, factors, grad_x, total, total_out, *geometry, DENSE=True, **args
            )
    return grad_x, sums


def _dense_reference_backward(ctx, x, grad_y):
    """The gradients of the unfused path (recomputing its forward): the answer to a failed backward launch."""

    with torch.enable_grad():
        xr = x.detach().float().requires_grad_(ctx.needs_input_grad[0])
        params = [p.detach().requires_grad_(True) for p in ctx.params]
        alpha = dense_branch_alpha(xr, *params, ctx.window, ctx.alpha_range, ctx.input_scale)
        y = PPool2dReference.apply(xr, scale_gradient(alpha, ctx.grad_scale), ctx.window, ctx.include_pad)
        inputs = [t for t, needed in zip([xr, *params], ctx.needs_input_grad[:5]) if needed]
        grads = list(torch.autograd.grad(y, inputs, grad_y.float()))
    out = [grads.pop(0) if needed else None for needed in ctx.needs_input_grad[:5]]
    if out[0] is not None:
        out[0] = out[0].to(x.dtype)
        if ctx.channels_last:
            out[0] = out[0].contiguous(memory_format=torch.channels_last)
    return (*out, None, None, None, None, None, None, None, None)


def dense_apply(
    x: Tensor,
    params,
    window: Window,
    alpha_range,
    input_scale: float,
    grad_scale: float,
    include_pad: bool,
    need_grad: bool,
    explicit: bool,
    check_negative: bool = True,
):
    """``DensePPool2dTriton`` with the safety nets of ``apply``: the first-result check (its own, once per device and
    dtype), and on a failure (but NegativeInput) a warning once, the Triton path off and TritonFailure (the caller
    then runs the unfused path), unless ``explicit`` or strict mode, which raise it as is."""

    def launch():
        _check_dense_first_result(x, window, alpha_range, input_scale, grad_scale, include_pad)
        return DensePPool2dTriton.apply(
            x, *params, window, alpha_range, input_scale, grad_scale, include_pad, need_grad, check_negative, explicit
        )

    return _guarded(launch, explicit)
