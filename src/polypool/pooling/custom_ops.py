"""The fused P-pooling kernels as ``torch.library`` ops, so that ``torch.compile`` calls them instead of tracing the
reference op: ``polypool::p_pool2d_triton_v2`` (``triton_op`` + ``wrap_triton``: Inductor sees the Triton kernels) and
``polypool::p_pool2d_cpu_v2`` (``custom_op`` around the C++ kernel), each with a fake kernel and an autograd formula
whose backward is again such an op (``OP_NAMES``).

``p_pool2d`` uses them only while ``torch.compile`` traces it (not under ``torch.export``, which keeps the reference
op's plain torch ops so that the exported program runs anywhere). A compiled graph cannot branch on the data, so
there, unless the caller says the input is non-negative, every window is also computed by the signed path
(:mod:`polypool.pooling.signed`) and the op's result kept where the window is finite and >= 0; the first-result
check and the fallback of the eager path do not apply inside a compiled graph.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import cpu_fused, triton_fused
from .fused_interface import alpha_is_dense, is_channels_last
from .geometry import Window

__all__ = ["OP_NAMES", "compiled_p_pool2d", "serves"]

# The ops' names carry their schema's version: torch.compile's FX graph cache keys a compiled graph on the names of
# the ops it calls, not on their schemas (pytorch/pytorch#187319), so a graph compiled against an older schema would
# be reused after an upgrade and fail (version 1's forward also returned the window max: "tuple index out of range").
# Bump it whenever an op's arguments or outputs change.
SCHEMA_VERSION = 2
OP_NAMES = {
    op: f"polypool::p_pool2d_{op}_v{SCHEMA_VERSION}" for op in ("cpu", "cpu_backward", "triton", "triton_backward")
}


def _window_args(window: Window) -> tuple[list[int], list[int], list[int]]:
    return list(window.kernel), list(window.stride), list(window.padding)


# ------------------------------------------------------------------------------------------------ CPU (C++)


@torch.library.custom_op(OP_NAMES["cpu"], mutates_args=())
def p_pool2d_cpu(
    x: Tensor, alpha: Tensor, dense: bool, kernel: list[int], stride: list[int], padding: list[int], out_size: list[int]
) -> tuple[Tensor, Tensor]:
    """(y, den) of a non-negative fp32 x; alpha fp32 per plane (N*C,) or dense (N, C, OH, OW). The kernel keeps no
    window max for the backward: it recomputes it."""
    y, den, _ = cpu_fused.load_extension().forward(
        x.contiguous(), alpha.contiguous(), dense, kernel, stride, padding, out_size, True, True
    )
    return y, den


@p_pool2d_cpu.register_fake
def _(x, alpha, dense, kernel, stride, padding, out_size):
    shape = (x.shape[0], x.shape[1], out_size[0], out_size[1])
    return x.new_empty(shape), x.new_empty(shape)


@torch.library.custom_op(OP_NAMES["cpu_backward"], mutates_args=())
def p_pool2d_cpu_backward(
    x: Tensor,
    alpha: Tensor,
    dense: bool,
    den: Tensor,
    y: Tensor,
    grad_y: Tensor,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
) -> tuple[Tensor, Tensor]:
    grad_x, grad_alpha = cpu_fused.load_extension().backward(
        x.contiguous(),
        alpha.contiguous(),
        dense,
        den.contiguous(),
        y.contiguous(),
        grad_y.contiguous().float(),
        True,
        kernel,
        stride,
        padding,
    )
    return grad_x, grad_alpha


@p_pool2d_cpu_backward.register_fake
def _(x, alpha, dense, den, y, grad_y, kernel, stride, padding):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(alpha)


def _cpu_setup(ctx, inputs, output):
    x, alpha, dense, kernel, stride, padding, _ = inputs
    y, den = output
    ctx.save_for_backward(x, alpha, den, y)
    ctx.args = (dense, kernel, stride, padding)


def _cpu_backward(ctx, grad_y, grad_den):
    x, alpha, den, y = ctx.saved_tensors
    dense, kernel, stride, padding = ctx.args
    grad_x, grad_alpha = p_pool2d_cpu_backward(x, alpha, dense, den, y, grad_y, kernel, stride, padding)
    return grad_x, grad_alpha, None, None, None, None, None


p_pool2d_cpu.register_autograd(_cpu_backward, setup_context=_cpu_setup)


# ------------------------------------------------------------------------------------------------ GPU (Triton)


def _triton_args(window: Window, x: Tensor, total: int, channels_last: bool, *others: Tensor) -> dict:
    return triton_fused.launch_args(window, x, total, channels_last, *others)


def _triton_forward(
    x: Tensor, alpha: Tensor, dense: bool, kernel: list[int], stride: list[int], padding: list[int], out_size: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, den, q) of a non-negative x (fp32/fp16/bf16, any strides); q = y/m in fp32, the backward's state with den
    (the backward recomputes the window max)."""
    k = triton_fused.kernels()
    window = Window.make(kernel, stride, padding)
    n, c, height, width = x.shape
    out_h, out_w = out_size
    channels_last = is_channels_last(x)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    shape = (n, c, out_h, out_w)
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    den = torch.empty(shape, dtype=torch.float32, device=x.device, memory_format=memory_format)
    q = torch.empty(shape, dtype=torch.float32, device=x.device, memory_format=memory_format)
    total = n * c * out_h * out_w
    args = _triton_args(window, x, total, channels_last, y)
    grid = triton_fused.grid(total, args["BLOCK"])
    negative = torch.empty(grid, dtype=torch.int8, device=x.device)  # not read: the caller passes a finite x >= 0
    _launch(k.p_pool2d_forward_kernel)[grid](
        x,
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
        DENSE=dense,
        SAVE_Q=True,
        STORE_STATE=True,
        INCLUDE_PAD=True,
        **args,
    )
    return y, den, q


def _triton_backward_op(
    x: Tensor,
    alpha: Tensor,
    dense: bool,
    den: Tensor,
    q: Tensor,
    grad_y: Tensor,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
) -> tuple[Tensor, Tensor]:
    """(dx in x's layout, dalpha per output in fp32)."""
    k = triton_fused.kernels()
    window = Window.make(kernel, stride, padding)
    _n, c, height, width = x.shape
    out_h, out_w = den.shape[-2], den.shape[-1]
    channels_last = is_channels_last(x)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    grad_y = grad_y.contiguous(memory_format=memory_format)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    partial = torch.empty(den.shape, dtype=torch.float32, device=x.device, memory_format=memory_format)
    geometry = (c, height, width, out_h, out_w, *x.stride())
    total_out = den.numel()
    factors = torch.empty((3, total_out), dtype=torch.float32, device=x.device)  # per output, once
    args = _triton_args(window, x, total_out, channels_last, den, factors)
    _launch(k.p_pool2d_grad_factors_kernel)[triton_fused.grid(total_out, args["BLOCK"])](
        x,
        alpha,
        den,
        q,
        grad_y,
        factors,
        partial,
        total_out,
        *geometry,
        DENSE=dense,
        Q_SAVED=True,
        NEED_FACTORS=True,
        NEED_ALPHA=True,
        **args,
    )
    total = x.numel()
    args = _triton_args(window, x, total, channels_last, den, factors)
    _launch(k.p_pool2d_grad_input_kernel)[triton_fused.grid(total, args["BLOCK"])](
        x, alpha, factors, grad_x, total, total_out, *geometry, DENSE=dense, **args
    )
    return grad_x, partial


def _launch(kernel):
    """The kernel as Inductor sees it (wrap_triton), or as is under Triton's interpreter, whose kernels are not
    JIT functions that wrap_triton can trace (there the ops are opaque custom ops with fake kernels instead)."""
    return kernel if triton_fused.interpreting() else torch.library.wrap_triton(kernel)


def _triton_forward_fake(x, alpha, dense, kernel, stride, padding, out_size):
    memory_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    shape = (x.shape[0], x.shape[1], out_size[0], out_size[1])
    y = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    den, q = (torch.empty(shape, dtype=torch.float32, device=x.device, memory_format=memory_format) for _ in range(2))
    return y, den, q


def _triton_backward_fake(x, alpha, dense, den, q, grad_y, kernel, stride, padding):
    memory_format = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    return (
        torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format),
        torch.empty(den.shape, dtype=torch.float32, device=x.device, memory_format=memory_format),
    )


def _opaque_triton_ops():
    forward = torch.library.custom_op(OP_NAMES["triton"], mutates_args=())(_triton_forward)
    forward.register_fake(_triton_forward_fake)
    backward = torch.library.custom_op(OP_NAMES["triton_backward"], mutates_args=())(_triton_backward_op)
    backward.register_fake(_triton_backward_fake)
    return forward, backward


if triton_fused.interpreting():  # read once, at import (as triton.jit does): the tests without a GPU
    p_pool2d_triton, p_pool2d_triton_backward = _opaque_triton_ops()
else:
    try:
        p_pool2d_triton = torch.library.triton_op(OP_NAMES["triton"], mutates_args=())(_triton_forward)
        p_pool2d_triton_backward = torch.library.triton_op(OP_NAMES["triton_backward"], mutates_args=())(
            _triton_backward_op
        )
    except Exception:  # a torch without triton_op support: the same ops, opaque to Inductor
        p_pool2d_triton, p_pool2d_triton_backward = _opaque_triton_ops()


def _triton_setup(ctx, inputs, output):
    x, alpha, dense, kernel, stride, padding, _ = inputs
    _y, den, q = output
    ctx.save_for_backward(x, alpha, den, q)
    ctx.args = (dense, kernel, stride, padding)


def _triton_backward(ctx, grad_y, grad_den, grad_q):
    x, alpha, den, q = ctx.saved_tensors
    dense, kernel, stride, padding = ctx.args
    grad_x, partial = p_pool2d_triton_backward(x, alpha, dense, den, q, grad_y, kernel, stride, padding)
    grad_alpha = partial if dense else partial.sum(dim=(2, 3)).reshape(-1)
    return grad_x, grad_alpha, None, None, None, None, None


p_pool2d_triton.register_autograd(_triton_backward, setup_context=_triton_setup)


# ------------------------------------------------------------------------------------------------ dispatch


def serves(x: Tensor, alpha, backend: str) -> Optional[str]:
    """Which op serves a traced call: "triton", "cpu" or None (the reference op). Only checks that tracing can
    follow (device, dtype, switches, a failure recorded earlier): the ops import Triton or build the C++ kernel
    when they first run."""
    if isinstance(alpha, Tensor) and alpha.device != x.device:
        return None
    on_triton_device = x.is_cuda or (backend == "triton" and x.device.type == "cpu" and triton_fused.interpreting())
    if (
        backend in ("auto", "triton")
        and on_triton_device
        and x.dtype in triton_fused.DTYPES
        and triton_fused.enabled()
        and triton_fused.failure() is None
    ):
        return "triton"
    if (
        backend in ("auto", "cpu_fused")
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and cpu_fused.enabled()
        and cpu_fused.load_error() is None
    ):
        return "cpu"
    return None


def compiled_p_pool2d(x: Tensor, alpha, window: Window, op: str) -> Tensor:
    """P-pooling of a finite x >= 0 through the registered op ``op``; alpha's gradient flows through its layout
    change."""
    n, c, height, width = x.shape
    out_h, out_w = window.output_size(height, width)
    dense = alpha_is_dense(alpha)
    if not isinstance(alpha, Tensor):
        alpha_k = torch.full((n * c,), float(alpha), device=x.device)
    else:
        a = alpha.to(device=x.device, dtype=torch.float32)
        while a.dim() < 4:
            a = a.unsqueeze(0)
        if dense:
            memory_format = torch.channels_last if is_channels_last(x) and op == "triton" else torch.contiguous_format
            alpha_k = a.expand(n, c, out_h, out_w).contiguous(memory_format=memory_format)
        else:
            alpha_k = a.expand(n, c, 1, 1).reshape(n * c)
    args = (dense, *_window_args(window), [out_h, out_w])
    if op == "triton":
        y = p_pool2d_triton(x, alpha_k, *args)[0]
    else:
        y = p_pool2d_cpu(x, alpha_k, *args)[0]
    return y
