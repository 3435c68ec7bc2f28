"""``p_pool2d``: P-pooling's entry point, which picks the backend for each call.

    y_j = sum_{i in R_j} x_i^(a+1) / sum_{i in R_j} x_i^a,   a >= 0

The layers of this package import one way: the reference op (``reference.py``: the maths and conventions, for
finite x >= 0) and the signed path (``signed.py``: windows with a negative or non-finite element); the fused
backends that reproduce the reference op (``cpu_fused.py``: C++; ``triton_fused.py``: Triton; ``custom_ops.py``:
both as ``torch.library`` ops for ``torch.compile``); and this dispatcher on top.

Conventions, all documented in the README (the maths: ``reference.py``)
------------------------------------------------------------------------
* Padding is zeros, counted in the window like ``avg_pool2d(count_include_pad=True)`` (``count_include_pad=False``
  leaves it out); in ceil mode the part of a window that overhangs the padded input is not part of the window.
* Negative and non-finite inputs: a window with a negative element is shifted by its own minimum, pooled and
  shifted back; +-inf and NaN give the formula's limits (+inf: +inf; NaN: NaN; -inf: left out at a > 0).
  Each window's output depends on that window only (:mod:`.signed`, which computes those windows; the authors'
  code shifts whole maps, which agrees on the ReLU outputs the paper pools). ``check=True`` raises on non-finite
  inputs instead.
* ``alpha=float("inf")`` is max pooling (the a -> inf limit), in every backend.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import Tensor

from . import cpu_fused, custom_ops, triton_fused
from .fused_interface import NegativeInput
from .geometry import IntOrPair, Window
from .reference import Alpha, PPool2dReference
from .signed import signed_p_pool2d, window_max_pool

Backend = Literal["auto", "reference", "cpu_fused", "triton"]
BACKENDS = ("auto", "reference", "cpu_fused", "triton")

__all__ = ["p_pool2d", "alpha_shape_error", "nonnegative_finite"]

_PPool2d = PPool2dReference  # the name before the reference op had a module of its own


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
        raise TypeError(
            f"p_pool2d expects a floating-point tensor, got {type(input).__name__}"
            f"{'' if not isinstance(input, Tensor) else ' of dtype ' + str(input.dtype)}"
        )
    if input.dim() == 3:
        alpha_3d = alpha.unsqueeze(0) if isinstance(alpha, Tensor) and alpha.dim() == 4 else alpha
        return p_pool2d(
            input.unsqueeze(0),
            alpha_3d,
            kernel_size,
            stride,
            padding,
            ceil_mode,
            check,
            backend,
            input_nonnegative,
            count_include_pad,
        ).squeeze(0)
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
            raise ValueError(
                "alpha must be >= 0 and finite everywhere in a tensor alpha (got a negative, NaN or inf "
                "value): clamp it to [0, a finite maximum]; a float alpha=float('inf') is max pooling"
            )
    include_pad = bool(count_include_pad) or window.padding == (0, 0)  # without padding the flag changes nothing
    if not isinstance(alpha, Tensor) and alpha == math.inf:  # the a -> inf limit, in every backend
        return window_max_pool(input, window, include_pad)
    if torch.compiler.is_compiling() and not torch.compiler.is_exporting() and backend in BACKENDS and include_pad:
        # torch.compile: the fused kernels as torch.library ops, which Inductor calls (torch.export keeps the
        # reference op's plain torch ops, which any runtime can run). A graph cannot branch on the data: without
        # the caller's word that x >= 0, every window also goes through the signed path.
        op = custom_ops.serves(input, alpha, backend)
        if op is not None:

            def compiled(x):
                return custom_ops.compiled_p_pool2d(x, alpha, window, op)

            return (
                compiled(input)
                if input_nonnegative
                else _with_signed_windows(input, alpha, window, include_pad, compiled)
            )
    function = _select_backend(backend, input, alpha)
    if function is PPool2dReference:

        def reference(x):
            return PPool2dReference.apply(x, alpha, window, include_pad)

        if input_nonnegative or (not torch.compiler.is_compiling() and nonnegative_finite(input)):
            return reference(input)
        return _with_signed_windows(input, alpha, window, include_pad, reference)
    # a fused kernel checks for negatives as it reads x (no pass of its own), and writes the backward's state only
    # when a gradient can be asked for; +inf and NaN show in its output
    need_grad = torch.is_grad_enabled() and (input.requires_grad or (isinstance(alpha, Tensor) and alpha.requires_grad))
    check_negative = not input_nonnegative
    if function is triton_fused.PPool2dTriton:  # with its safety nets: a failure falls back to the reference op

        def run(x):
            return triton_fused.apply(
                x,
                alpha,
                window,
                need_grad,
                explicit=backend == "triton",
                check_negative=check_negative,
                include_pad=include_pad,
            )

        def run_nonnegative(x):  # x >= 0 and finite: the reference op answers if Triton fails
            try:
                return run(x)
            except triton_fused.TritonFailure:
                return PPool2dReference.apply(x, alpha, window, include_pad)
    else:

        def run(x):
            return function.apply(x, alpha, window, need_grad, check_negative, include_pad)

        run_nonnegative = run
    try:
        y = run(input)
    except NegativeInput:
        return _with_signed_windows(input, alpha, window, include_pad, run_nonnegative)
    except triton_fused.TritonFailure:  # warned once; the path is off from now on
        return p_pool2d(
            input,
            alpha,
            kernel_size,
            stride,
            padding,
            ceil_mode,  # auto: no Triton any more
            input_nonnegative=input_nonnegative,
            count_include_pad=count_include_pad,
        )
    if check_negative and not math.isfinite(y.detach().amax()):  # +inf or NaN in x (y >= 0 here)
        return _with_signed_windows(input, alpha, window, include_pad, run_nonnegative)
    return y


def _select_backend(backend: Backend, x: Tensor, alpha: Alpha):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference" or torch.compiler.is_compiling():
        return PPool2dReference  # traced (torch.export, or no fused op serves): the reference op's torch ops
    if backend in ("auto", "triton") and triton_fused.supports(x, alpha, allow_cpu=backend == "triton"):
        return triton_fused.PPool2dTriton
    if backend in ("auto", "cpu_fused") and cpu_fused.supports(x, alpha):
        return cpu_fused.PPool2dCPU
    if backend == "cpu_fused":
        raise ValueError(
            f"backend='cpu_fused' serves fp32 CPU tensors with a built kernel; got a {x.dtype} tensor on "
            f"{x.device} (kernel enabled: {cpu_fused.enabled()})"
        )
    if backend == "triton":
        raise ValueError(
            f"backend='triton' serves fp32/fp16/bf16 CUDA tensors (CPU ones with TRITON_INTERPRET=1) with Triton "
            f"installed; got a {x.dtype} tensor on {x.device} (Triton installed: {triton_fused.kernels() is not None}, "
            f"POLYPOOL_TRITON enabled: {triton_fused.enabled()}, interpreter: {triton_fused.interpreting()}, "
            f"switched off after a failure: {triton_fused.failure() or 'no'})"
        )
    return PPool2dReference
