"""The fused CPU path of ``p_pool2d``: a C++ kernel (``csrc/``: ``p_pool2d.cpp`` binds ``cpu/p_pool2d_kernel.cpp``),
compiled on first use.

It computes exactly the reference op's arithmetic in one pass over the windows, vectorised with ATen's
``Vectorized<float>`` (its fast exp; logarithms from each element's binary exponent and a polynomial of its
mantissa; AVX2 where the CPU has it). It serves fp32 CPU tensors; everything else
goes to the reference op. The build is cached by torch (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``); if it fails (no C++ compiler, say), ``p_pool2d`` warns once and uses the
reference op. ``POLYPOOL_CPU_KERNEL=0`` turns the fused path off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from .dense_branch import branch_grads, branch_tensors
from .fused_interface import NegativeInput, alpha_grad_to_shape, is_channels_last, kernel_alpha, raise_if_negative
from .geometry import Window

log = logging.getLogger(__name__)
CSRC = Path(__file__).with_name("csrc")
# The translation units the extension is built from (the headers they include sit beside them: csrc/*.h, csrc/cpu/*.h)
SOURCES = (CSRC / "p_pool2d.cpp", CSRC / "cpu" / "p_pool2d_kernel.cpp")

_lock = threading.Lock()
_extensions: dict[torch.dtype, object] = {}
_load_errors: dict[torch.dtype, str] = {}
# The kernels' compute type. float64 is a build of the same source for the tests only (a float64 gradcheck of the
# fused formulas): p_pool2d sends float64 to the reference op, which is exact to ~1e-12.
_DTYPE_FLAGS = {torch.float32: [], torch.float64: ["-DPPOOL_DOUBLE"]}


def _build_flags(dtype: torch.dtype = torch.float32) -> list[str]:
    flags = ["-O3", "-fopenmp"]
    capability = torch.backends.cpu.get_cpu_capability()  # what torch itself dispatches to on this CPU
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return flags + _DTYPE_FLAGS[dtype]


def source_files() -> list[Path]:
    """Every file of the kernel's source, headers included, in a fixed order: what the build digest hashes."""
    return sorted(path for path in CSRC.rglob("*") if path.suffix in (".cpp", ".h"))


def build_digest(flags: list[str]) -> str:
    """The build's identity: every source file (its path under csrc/ and its bytes), the flags and torch's version. It
    names the extension, so an edit of any file, a header too, builds afresh instead of loading a stale cached build."""
    digest = hashlib.sha1()
    for path in source_files():
        digest.update(path.relative_to(CSRC).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join(flags).encode() + torch.__version__.encode())
    return digest.hexdigest()


def load_error(dtype: torch.dtype = torch.float32) -> Optional[str]:
    """Why the kernel of this compute type could not be built (None if it was, or was not tried)."""
    return _load_errors.get(dtype)


def load_extension(dtype: torch.dtype = torch.float32):
    """The compiled module computing in ``dtype`` (float32; float64 for the tests), building it on the first call;
    None (with a warning, once) if it cannot be built."""
    if dtype not in _DTYPE_FLAGS:
        raise ValueError(f"the fused CPU kernel computes in {sorted(map(str, _DTYPE_FLAGS))}, not {dtype}")
    if dtype in _extensions or dtype in _load_errors:
        return _extensions.get(dtype)
    with _lock:
        if dtype in _extensions or dtype in _load_errors:
            return _extensions.get(dtype)
        from torch.utils import cpp_extension

        flags = _build_flags(dtype)
        digest = build_digest(flags)
        log.info("building polypool's fused CPU P-pooling kernel (%s; once, cached by torch)", dtype)
        try:
            _extensions[dtype] = cpp_extension.load(
                name=f"polypool_p_pool2d_cpu_{digest[:12]}",
                sources=[str(path) for path in SOURCES],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
        except Exception as error:  # a missing compiler, headers, ...: the reference op still works
            _load_errors[dtype] = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"polypool: the fused CPU P-pooling kernel could not be built, using the (slower) "
                f"reference op instead. Set POLYPOOL_CPU_KERNEL=0 to skip the build. Cause: "
                f"{_load_errors[dtype][:500]}",
                RuntimeWarning,
                stacklevel=3,
            )
    return _extensions.get(dtype)


def enabled() -> bool:
    return os.environ.get("POLYPOOL_CPU_KERNEL", "1") != "0"


def supports(x: Tensor, alpha) -> bool:
    """Whether the fused CPU path serves this call (fp32 CPU input and alpha; the kernel builds)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not enabled():
        return False
    if isinstance(alpha, Tensor) and (alpha.device.type != "cpu" or alpha.dtype not in (torch.float32, torch.float64)):
        return False
    return load_extension() is not None


class PPool2dCPU(torch.autograd.Function):
    """``PPool2dReference`` (the reference op), computed by the fused C++ kernel (fp32, CPU); raises NegativeInput on a
    negative x.

    ``need_grad=False`` (``p_pool2d`` passes it under ``no_grad`` or when nothing requires a gradient): the kernel
    writes only y, not the backward's window max and denominator. The kernel works on NCHW; a channels_last input
    gets y and dx back in channels_last, as ``max_pool2d`` does (one copy each way). It computes in x's dtype, which
    ``p_pool2d`` only ever makes float32 (``supports``); the tests also run it in float64 (the float64 build)."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        alpha,
        window: Window,
        need_grad: bool = True,
        check_negative: bool = True,
        include_pad: bool = True,
    ):
        ext = load_extension(x.dtype)
        channels_last = is_channels_last(x)
        x = x.contiguous()
        n, c, height, width = x.shape
        out_h, out_w = window.output_size(height, width)
        alpha_k, dense = kernel_alpha(alpha, n, c, out_h, out_w, x.device, dtype=x.dtype)
        args = (list(window.kernel), list(window.stride), list(window.padding))
        y, den, negative = ext.forward(x, alpha_k, dense, *args, [out_h, out_w], need_grad, include_pad)
        if check_negative:  # False: the caller guarantees x >= 0
            raise_if_negative(negative, x, window)
        ctx.window, ctx.dense, ctx.channels_last = window, dense, channels_last
        ctx.alpha_shape = alpha.shape if isinstance(alpha, Tensor) else None
        ctx.alpha_dtype = alpha.dtype if isinstance(alpha, Tensor) else None
        if need_grad:  # not the window max: the backward recomputes it from the window it reads anyway
            ctx.save_for_backward(x, alpha_k, den, y)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        if not ctx.saved_tensors:
            raise RuntimeError("p_pool2d (cpu_fused) ran its forward with need_grad=False: no state for a backward")
        x, alpha_k, den, y = ctx.saved_tensors
        window: Window = ctx.window
        need_alpha = ctx.needs_input_grad[1] and ctx.alpha_shape is not None
        grad_x, grad_alpha_map = load_extension(x.dtype).backward(
            x,
            alpha_k,
            ctx.dense,
            den,
            y,
            grad_y.contiguous().to(x.dtype),
            need_alpha,
            list(window.kernel),
            list(window.stride),
            list(window.padding),
        )
        if ctx.channels_last:
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        grad_alpha = None
        if need_alpha:
            grad_alpha = alpha_grad_to_shape(grad_alpha_map, ctx.dense, *x.shape[:2], ctx.alpha_shape, ctx.alpha_dtype)
        return (grad_x if ctx.needs_input_grad[0] else None), grad_alpha, None, None, None, None


class DensePPool2dCPU(torch.autograd.Function):
    """P-pooling with the fused dense branch, by the C++ kernel (fp32 CPU, x >= 0; raises NegativeInput
    otherwise). Returns (y, alpha, alpha's (mean, min, max)); alpha and its statistics are not differentiable (the
    gradient that reaches alpha is folded into the parameters'). It computes in x's dtype: float32 as routed by
    ``dense_p_pool2d``, float64 in the tests (the kernel's float64 build)."""

    @staticmethod
    def forward(
        ctx,
        x,
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
    ):
        ext = load_extension(x.dtype)
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        x = x.contiguous()
        _n, c, height, width = x.shape
        out_h, out_w = window.output_size(height, width)
        taps = window.kernel[0] * window.kernel[1]
        k, slope, w, b = branch_tensors(conv_weight, prelu_weight, proj_weight, proj_bias, c, taps, x.dtype)
        lo, hi = alpha_range
        y, alpha, den, stats, negative = ext.dense_forward(
            x,
            k,
            slope,
            w,
            b,
            float(lo),
            float(hi),
            float(input_scale),
            list(window.kernel),
            list(window.stride),
            list(window.padding),
            [out_h, out_w],
            need_grad,
            include_pad,
        )
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
        grad_x, partial = load_extension(x.dtype).dense_backward(
            x,
            den,
            y,
            grad_y.contiguous().to(x.dtype),
            k,
            slope,
            w,
            b,
            float(lo),
            float(hi),
            ctx.input_scale,
            list(window.kernel),
            list(window.stride),
            list(window.padding),
        )
        if ctx.channels_last:
            grad_x = grad_x.contiguous(memory_format=torch.channels_last)
        n, c = x.shape[:2]
        grads = branch_grads(partial, n, c, window.kernel[0] * window.kernel[1], ctx.params, ctx.grad_scale)
        grads = tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[1:5]))
        return (grad_x if ctx.needs_input_grad[0] else None), *grads, None, None, None, None, None, None
