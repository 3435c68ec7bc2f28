"""P-pooling with dense alpha: the authors' side branch, and the same branch fused into the pooling kernels.

The branch (the authors' code; ``PPool2d(alpha_mode="dense")``) predicts one alpha per output position and channel:

    alpha = clamp(w_c * prelu_c(sum_i k_c,i * x_i * f_n,c) + b_c, lo, hi),   f_n,c = scale / (max_hw |x_n,c| + 1)

a depthwise k x k conv with the pooling's own kernel, stride and padding over the detached, per-map normalised input,
PReLU, a per-channel 1x1 affine and a clamp. Its conv reads exactly the window that the pooling reads, so the fused
kernels compute alpha from the window they already loaded: no alpha map is read back, and the branch's four ops
(each a pass over memory) are gone. The backward goes to x through the pooling only (the branch input is detached,
as the authors have it) and to k, the PReLU slope, w and b as per-plane partial sums.

:func:`dense_branch_alpha` is the unfused branch: the reference the fused kernels are tested against, and the path
for everything they do not serve (other dtypes and devices, a negative input, ``torch.compile``/``torch.export``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu_fused, triton_fused
from .functional import p_pool2d
from .fused_interface import NegativeInput
from .geometry import IntOrPair, Window, pad_ceil_overhang

__all__ = ["dense_branch_alpha", "dense_p_pool2d", "dense_p_pool2d_with_stats", "scale_gradient"]


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` in the forward pass (exactly: ``x.detach() + 0``), ``scale`` times its gradient in the backward pass."""
    if scale == 1.0:
        return x
    return x.detach() + (x - x.detach()) * scale


def dense_branch_alpha(x: Tensor, conv_weight: Tensor, prelu_weight: Tensor, proj_weight: Tensor,
                       proj_bias: Tensor, window: Window, alpha_range: tuple[float, float],
                       input_scale: float = 1.0) -> Tensor:
    """The unfused side branch: alpha ``(N, C, H_out, W_out)`` of the pooling input x (read detached)."""
    x = x.detach()
    x = x / (x.abs().amax(dim=(-2, -1), keepdim=True) + 1) * input_scale
    channels = x.shape[1]
    z = F.conv2d(pad_ceil_overhang(x, window), conv_weight, None, window.stride, window.padding, 1, channels)
    alpha = F.conv2d(F.prelu(z, prelu_weight), proj_weight, proj_bias, 1, 0, 1, channels)
    return alpha.clamp(*alpha_range)


def _branch_tensors(conv_weight, prelu_weight, proj_weight, proj_bias, channels: int, taps: int,
                    dtype: torch.dtype = torch.float32):
    """The branch parameters as the kernels take them: in their compute dtype, contiguous, k (C, taps), slope, w,
    b (C,)."""
    def flat(t: Tensor, n: int) -> Tensor:
        return t.detach().to(dtype).reshape(-1).expand(n).contiguous() if t.numel() == 1 else \
            t.detach().to(dtype).reshape(n).contiguous()
    return (conv_weight.detach().to(dtype).reshape(channels, taps).contiguous(), flat(prelu_weight, channels),
            flat(proj_weight, channels), flat(proj_bias, channels))


def _branch_grads(partial: Tensor, n: int, channels: int, taps: int, params, grad_scale: float):
    """The kernels' per-plane sums (N*C, taps + 3) to the gradients of the four parameters, in their shapes."""
    sums = partial.view(n, channels, taps + 3).sum(dim=0) * grad_scale
    conv_weight, prelu_weight, proj_weight, proj_bias = params
    grads = (sums[:, :taps], sums[:, taps], sums[:, taps + 1], sums[:, taps + 2])
    # a parameter shared by the channels (PReLU's num_parameters=1) gets the sum over them
    return tuple((g.sum() if p.numel() == 1 else g).reshape(p.shape).to(p.dtype) for g, p in zip(grads, params))


class DensePPool2dCPU(torch.autograd.Function):
    """P-pooling with the fused dense branch, by the C++ kernel (fp32 CPU, x >= 0; raises NegativeInput
    otherwise). Returns (y, alpha, alpha's (mean, min, max)); alpha and its statistics are not differentiable (the
    gradient that reaches alpha is folded into the parameters'). It computes in x's dtype: float32 as routed by
    ``dense_p_pool2d``, float64 in the tests (the kernel's float64 build)."""

    @staticmethod
    def forward(ctx, x, conv_weight, prelu_weight, proj_weight, proj_bias, window: Window,
                alpha_range: tuple[float, float], input_scale: float, grad_scale: float, include_pad: bool,
                need_grad: bool):
        ext = cpu_fused.load_extension(x.dtype)
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x = x.contiguous()
        n, c, height, width = x.shape
        out_h, out_w = window.output_size(height, width)
        taps = window.kernel[0] * window.kernel[1]
        k, slope, w, b = _branch_tensors(conv_weight, prelu_weight, proj_weight, proj_bias, c, taps, x.dtype)
        lo, hi = alpha_range
        y, alpha, den, stats, negative = ext.dense_forward(
            x, k, slope, w, b, float(lo), float(hi), float(input_scale), list(window.kernel), list(window.stride),
            list(window.padding), [out_h, out_w], need_grad, include_pad)
        if negative:
            raise NegativeInput
        stats = torch.stack([stats[:, 0].sum() / alpha.numel(), stats[:, 1].min(), stats[:, 2].max()])
        ctx.set_materialize_grads(False)  # alpha and its statistics get no gradient: no zero tensors for them
        ctx.window, ctx.alpha_range, ctx.grad_scale, ctx.channels_last = window, (lo, hi), grad_scale, channels_last
        ctx.input_scale = float(input_scale)
        ctx.params = (conv_weight, prelu_weight, proj_weight, proj_bias)  # for shapes and dtypes only
        if need_grad:
            # the backward recomputes the window max, alpha and the per-plane normaliser f from x; k, slope, w and b
            # are views of the parameters where those are contiguous in x's dtype (a shared PReLU slope: C copies)
            ctx.save_for_backward(x, den, y, k, slope, w, b)
        ctx.mark_non_differentiable(alpha, stats)
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
            alpha = alpha.contiguous(memory_format=torch.channels_last)
        return y, alpha, stats

    @staticmethod
    def backward(ctx, grad_y: Tensor, _grad_alpha, _grad_stats):
        if not ctx.saved_tensors:
            raise RuntimeError("dense p_pool2d (cpu_fused) ran its forward without need_grad: no state for a backward")
        x, den, y, k, slope, w, b = ctx.saved_tensors
        if grad_y is None:  # y took no part in the loss (grads are not materialised)
            return (None,) * 11
        window: Window = ctx.window
        lo, hi = ctx.alpha_range
        grad_x, partial = cpu_fused.load_extension(x.dtype).dense_backward(
            x, den, y, grad_y.contiguous().to(x.dtype), k, slope, w, b, float(lo), float(hi), ctx.input_scale,
            list(window.kernel), list(window.stride), list(window.padding))
        if ctx.channels_last:
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        n, c = x.shape[:2]
        grads = _branch_grads(partial, n, c, window.kernel[0] * window.kernel[1], ctx.params, ctx.grad_scale)
        grads = tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:5]))
        return (grad_x if ctx.needs_input_grad[0] else None), *grads, None, None, None, None, None, None


def _fused_route(x: Tensor, params: tuple[Tensor, ...], backend: str) -> Optional[str]:
    """Which fused kernel serves this call: "triton", "cpu", or None (then the unfused branch)."""
    if torch.compiler.is_compiling() or x.dim() != 4 or backend == "reference":
        return None
    if any(p.device != x.device for p in params):
        return None
    if backend in ("auto", "triton") and triton_fused.supports(x, None, allow_cpu=backend == "triton"):
        return "triton"
    if backend in ("auto", "cpu_fused") and cpu_fused.supports(x, None):
        return "cpu"
    return None


def dense_p_pool2d(*args, **kwargs) -> tuple[Tensor, Tensor]:
    """P-pooling with the dense alpha of the authors' side branch: ``(y, alpha)``, alpha ``(N, C, H_out, W_out)``
    detached (its gradient goes on into the branch's parameters). A fused kernel where one serves the call (C++ for
    fp32 CPU tensors, Triton on CUDA), else the unfused branch and :func:`p_pool2d`. The arguments are those of
    :func:`dense_p_pool2d_with_stats`."""
    y, alpha, _ = dense_p_pool2d_with_stats(*args, **kwargs)
    return y, alpha


def dense_p_pool2d_with_stats(
    input: Tensor,
    conv_weight: Tensor,
    prelu_weight: Tensor,
    proj_weight: Tensor,
    proj_bias: Tensor,
    kernel_size: IntOrPair,
    stride: Optional[IntOrPair] = None,
    padding: IntOrPair = 0,
    ceil_mode: bool = False,
    *,
    alpha_range: tuple[float, float] = (1.0, 50.0),
    input_scale: float = 1.0,
    alpha_grad_scale: float = 1.0,
    count_include_pad: bool = True,
    fused: bool = True,
    backend: str = "auto",
    check: bool = False,
    input_nonnegative: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`dense_p_pool2d`, plus alpha's ``(mean, min, max)`` as one tensor (the fused C++ kernel computes them
    as it writes alpha; else three reductions)."""
    if input.dim() == 3:
        y, alpha, stats = dense_p_pool2d_with_stats(
            input.unsqueeze(0), conv_weight, prelu_weight, proj_weight, proj_bias, kernel_size, stride, padding,
            ceil_mode, alpha_range=alpha_range, input_scale=input_scale, alpha_grad_scale=alpha_grad_scale,
            count_include_pad=count_include_pad, fused=fused, backend=backend, check=check,
            input_nonnegative=input_nonnegative)
        return y.squeeze(0), alpha.squeeze(0), stats
    window = Window.make(kernel_size, stride, padding, ceil_mode)
    params = (conv_weight, prelu_weight, proj_weight, proj_bias)
    route = _fused_route(input, params, backend) if fused and not check else None
    if route is not None:
        need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (input, *params))
        branch = (window, tuple(float(v) for v in alpha_range), float(input_scale), float(alpha_grad_scale),
                  bool(count_include_pad) or window.padding == (0, 0), need_grad)
        try:
            if route == "triton":
                y, alpha = triton_fused.dense_apply(input, params, *branch, explicit=backend == "triton",
                                                    check_negative=not input_nonnegative)
                fused = y, alpha, _stats(alpha)
            else:
                fused = DensePPool2dCPU.apply(input, *params, *branch)
            # +inf or NaN in x show in y: the unfused path gives each window the formula's limit
            if input_nonnegative or bool(torch.isfinite(fused[0]).all()):
                return fused
        except NegativeInput:
            pass  # the unfused branch on x, and p_pool2d's signed path for the windows with a negative
        except triton_fused.TritonFailure:
            pass  # warned once; the unfused path answers
    alpha = dense_branch_alpha(input, *params, window, alpha_range, input_scale)
    y = p_pool2d(input, scale_gradient(alpha, alpha_grad_scale), window.kernel, window.stride, window.padding,
                 window.ceil_mode, check, backend, input_nonnegative, count_include_pad=count_include_pad)
    alpha = alpha.detach()
    return y, alpha, _stats(alpha)


def _stats(alpha: Tensor) -> Tensor:
    with torch.no_grad():  # min/max, not aminmax: an exported program (ONNX) takes them
        return torch.stack([alpha.mean(), alpha.min(), alpha.max()]).float()
