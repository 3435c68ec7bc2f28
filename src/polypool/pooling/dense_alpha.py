"""P-pooling with dense alpha: the authors' side branch, and the same branch fused into the pooling kernels.

The branch (the authors' code; ``PPool2d(alpha_mode="dense")``) predicts one alpha per output position and channel:

    alpha = clamp(w_c * prelu_c(sum_i k_c,i * x_i * f_n,c) + b_c, lo, hi),   f_n,c = scale / (max_hw |x_n,c| + 1)

a depthwise k x k conv with the pooling's own kernel, stride and padding over the detached, per-map normalised input,
PReLU, a per-channel 1x1 affine and a clamp. Its conv reads exactly the window that the pooling reads, so the fused
kernels compute alpha from the window they already loaded: no alpha map is read back, and the branch's four ops
(each a pass over memory) are gone. The backward goes to x through the pooling only (the branch input is detached,
as the authors have it) and to k, the PReLU slope, w and b as per-plane partial sums.

:func:`dense_branch_alpha` (``dense_branch.py``) is the unfused branch: the reference the fused kernels
(``DensePPool2dCPU`` in ``cpu_fused.py``, ``triton_fused.dense_apply``) are tested against, and the path for
everything they do not serve (other dtypes and devices, a negative input, ``torch.compile``/``torch.export``). This
module picks the path for each call.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import cpu_fused, triton_fused
from .cpu_fused import DensePPool2dCPU
from .dense_branch import dense_branch_alpha, scale_gradient
from .functional import p_pool2d
from .fused_interface import NegativeInput
from .geometry import IntOrPair, Window

__all__ = ["DensePPool2dCPU", "dense_branch_alpha", "dense_p_pool2d", "dense_p_pool2d_with_stats", "scale_gradient"]


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
            input.unsqueeze(0),
            conv_weight,
            prelu_weight,
            proj_weight,
            proj_bias,
            kernel_size,
            stride,
            padding,
            ceil_mode,
            alpha_range=alpha_range,
            input_scale=input_scale,
            alpha_grad_scale=alpha_grad_scale,
            count_include_pad=count_include_pad,
            fused=fused,
            backend=backend,
            check=check,
            input_nonnegative=input_nonnegative,
        )
        return y.squeeze(0), alpha.squeeze(0), stats
    window = Window.make(kernel_size, stride, padding, ceil_mode)
    params = (conv_weight, prelu_weight, proj_weight, proj_bias)
    route = _fused_route(input, params, backend) if fused and not check else None
    if route is not None:
        need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (input, *params))
        branch = (
            window,
            tuple(float(v) for v in alpha_range),
            float(input_scale),
            float(alpha_grad_scale),
            bool(count_include_pad) or window.padding == (0, 0),
            need_grad,
        )
        try:
            if route == "triton":
                y, alpha = triton_fused.dense_apply(
                    input, params, *branch, explicit=backend == "triton", check_negative=not input_nonnegative
                )
                result = y, alpha, _stats(alpha)
            else:
                result = DensePPool2dCPU.apply(input, *params, *branch)
            # +inf or NaN in x show in y: the unfused path gives each window the formula's limit
            if input_nonnegative or bool(torch.isfinite(result[0]).all()):
                return result
        except NegativeInput:
            pass  # the unfused branch on x, and p_pool2d's signed path for the windows with a negative
        except triton_fused.TritonFailure:
            pass  # warned once; the unfused path answers
    alpha = dense_branch_alpha(input, *params, window, alpha_range, input_scale)
    y = p_pool2d(
        input,
        scale_gradient(alpha, alpha_grad_scale),
        window.kernel,
        window.stride,
        window.padding,
        window.ceil_mode,
        check,
        backend,
        input_nonnegative,
        count_include_pad=count_include_pad,
    )
    alpha = alpha.detach()
    return y, alpha, _stats(alpha)


def _stats(alpha: Tensor) -> Tensor:
    with torch.no_grad():  # min/max, not aminmax: an exported program (ONNX) takes them
        return torch.stack([alpha.mean(), alpha.min(), alpha.max()]).float()
