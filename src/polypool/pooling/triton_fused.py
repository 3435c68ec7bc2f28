"""The fused GPU path of ``p_pool2d``: the Triton kernels of ``triton_kernels.py`` behind an autograd Function.

``p_pool2d`` uses it by default for fp32/fp16/bf16 CUDA tensors when Triton imports; everything else goes to the
C++ CPU kernel or the reference op. With ``TRITON_INTERPRET=1`` set before the first use, ``backend="triton"``
also runs it on CPU tensors through Triton's interpreter (slow; it is how the tests check it without a GPU).
``POLYPOOL_TRITON=0`` turns the path off.

Saved for backward: x (the caller's graph keeps it anyway), the window max m in x's dtype (exact: m is one of
the x), the denominator in fp32, and y for fp32 inputs or q = y/m in fp32 for fp16/bf16 (the backward's
(a+1) - a q/r needs q to fp32 precision).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import Tensor

from .fused_interface import alpha_grad_to_shape, kernel_alpha, raise_if_negative
from .geometry import Window

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 512
NUM_WARPS = 4


def enabled() -> bool:
    return os.environ.get("POLYPOOL_TRITON", "1") != "0"


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def kernels():
    """The Triton kernels module, or None when Triton is not installed. Imported on first use: ``triton.jit``
    reads ``TRITON_INTERPRET`` when the module is imported, so set it before."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    from . import triton_kernels

    return triton_kernels


def supports(x: Tensor, alpha, allow_cpu: bool = False) -> bool:
    """Whether the Triton path serves this call: fp32/16/bf16 on CUDA (or on CPU through the interpreter when
    ``allow_cpu``), Triton installed, ``POLYPOOL_TRITON`` not 0."""
    if x.dtype not in DTYPES or not enabled():
        return False
    on_device = x.is_cuda or (allow_cpu and x.device.type == "cpu" and interpreting())
    if not on_device:
        return False
    if isinstance(alpha, Tensor) and alpha.device != x.device:
        return False
    return kernels() is not None


def _alloc(shape, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the kernels fill (each element written once; the tests poison this to check that)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _device_guard(x: Tensor):
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _geometry_args(window: Window) -> dict:
    (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, BLOCK=BLOCK, num_warps=NUM_WARPS)


def _blocks(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK


class PPool2dTriton(torch.autograd.Function):
    """``_PPool2d`` of the reference op, computed by the Triton kernels; raises NegativeInput on a negative x."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha, window: Window):
        k = kernels()
        x = x.contiguous()
        n, c, height, width = x.shape
        out_h, out_w = window.output_size(height, width)
        alpha_k, dense = kernel_alpha(alpha, n, c, out_h, out_w, x.device)
        save_q = x.dtype != torch.float32
        out_shape = (n, c, out_h, out_w)
        y = _alloc(out_shape, x.dtype, x.device)
        m = _alloc(out_shape, x.dtype, x.device)
        den = _alloc(out_shape, torch.float32, x.device)
        q = _alloc(out_shape, torch.float32, x.device) if save_q else den  # den is a placeholder: the kernel does not write q then
        grid = (n * c, _blocks(out_h * out_w))
        negative = _alloc(grid, torch.int8, x.device)
        with _device_guard(x):
            k.p_pool2d_forward_kernel[grid](
                x, alpha_k, y, m, den, q, negative, height, width, out_h, out_w,
                DENSE=dense, SAVE_Q=save_q, **_geometry_args(window))
        # One device sync: the reference pays it too (its shift check), without the kernel's fused pass over x.
        raise_if_negative(bool(negative.any()), x, window)
        ctx.window, ctx.dense, ctx.q_saved = window, dense, save_q
        ctx.alpha_shape = alpha.shape if isinstance(alpha, Tensor) else None
        ctx.alpha_dtype = alpha.dtype if isinstance(alpha, Tensor) else None
        ctx.save_for_backward(x, alpha_k, m, den, q if save_q else y)
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        x, alpha_k, m, den, y_or_q = ctx.saved_tensors
        k = kernels()
        n, c, height, width = x.shape
        out_h, out_w = m.shape[-2:]
        grad_y = grad_y.contiguous()
        need_x = ctx.needs_input_grad[0]
        need_alpha = ctx.needs_input_grad[1] and ctx.alpha_shape is not None
        args = (height, width, out_h, out_w)
        flags = dict(DENSE=ctx.dense, Q_SAVED=ctx.q_saved, **_geometry_args(ctx.window))
        grad_x = grad_alpha = None
        with _device_guard(x):
            if need_x:
                grad_x = _alloc(x.shape, x.dtype, x.device)  # every element is written: the kernel gathers, no zero fill
                k.p_pool2d_grad_input_kernel[(n * c, _blocks(height * width))](
                    x, alpha_k, m, den, y_or_q, grad_y, grad_x, *args, **flags)
            if need_alpha:
                blocks = _blocks(out_h * out_w)
                # dense: one value per output; per plane: one partial sum per program, summed below
                partial = _alloc(m.shape if ctx.dense else (n * c, blocks), torch.float32, x.device)
                k.p_pool2d_grad_alpha_kernel[(n * c, blocks)](
                    x, alpha_k, m, den, y_or_q, grad_y, partial, *args, **flags)
                grad_map = partial if ctx.dense else partial.sum(dim=1)
                grad_alpha = alpha_grad_to_shape(grad_map, ctx.dense, n, c, ctx.alpha_shape, ctx.alpha_dtype)
        return grad_x, grad_alpha, None
