"""Shared checks of the fused P-pooling kernels (C++ CPU, Triton) against the reference op."""

import pytest
import torch

from polypool.pooling import p_pool2d
from polypool.pooling.fused_interface import NegativeInput, runs_through
from polypool.pooling.geometry import Window


def compare_to_reference(
    x, alpha, kernel, stride, padding, ceil_mode, *, backend: str, function_name: str, rtol: float = 1e-5
):
    """The fused backend's values and gradients against the reference op's on the same input.

    The reference runs in fp32 on the same values (for fp16/bf16 inputs: the rounded ones), so for low precision
    ``rtol`` should be the dtype's rounding. Values to rtol; input gradients to rtol plus the fp32 conditioning of
    (a+1) - a q / r, about a * eps per window, for each of the windows that hold an element (their errors add up:
    at 5x5/1, 25 windows; random errors, so the square root of that); alpha gradients (sums of terms that cancel) on
    the scale of their maximum.
    """
    x_ref = x.detach().float().clone().requires_grad_(True)
    a_ref = alpha.detach().clone().requires_grad_(True) if isinstance(alpha, torch.Tensor) else alpha
    x = x.detach().clone().requires_grad_(True)
    a = alpha.detach().clone().requires_grad_(True) if isinstance(alpha, torch.Tensor) else alpha
    y = p_pool2d(x, a, kernel, stride, padding, ceil_mode, backend=backend)
    y_ref = p_pool2d(x_ref, a_ref, kernel, stride, padding, ceil_mode, backend="reference")
    assert runs_through(y, function_name)
    assert y.dtype == x.dtype
    torch.testing.assert_close(y.float(), y_ref, rtol=rtol, atol=1e-6)
    grad = torch.randn_like(y_ref)
    y.backward(grad.to(y.dtype))
    y_ref.backward(grad.to(y.dtype).float())
    a_max = float(alpha.max()) if isinstance(alpha, torch.Tensor) else float(alpha)
    window = Window.make(kernel, stride, padding, ceil_mode)
    windows_per_element = -(-window.kernel[0] // window.stride[0]) * -(-window.kernel[1] // window.stride[1])
    conditioning = (
        2 * max(a_max, 1.0) * torch.finfo(torch.float32).eps * grad.abs().max().item() * windows_per_element**0.5
    )
    torch.testing.assert_close(x.grad.float(), x_ref.grad, rtol=rtol, atol=1e-5 + conditioning)
    if isinstance(alpha, torch.Tensor):
        scale = a_ref.grad.abs().max().item()
        torch.testing.assert_close(a.grad, a_ref.grad, rtol=max(rtol, 1e-4), atol=max(rtol, 1e-4) * scale + 1e-6)


def check_negative_flag(function, backend: str, device="cpu"):
    """``function`` (a fused autograd Function) raises NegativeInput for a negative anywhere, also in a trailing
    row that no window reads, and not otherwise; p_pool2d then takes the windows with a negative through the
    signed path."""
    window = Window.make(2, 2, 0, False)
    x = torch.rand(2, 3, 41, 40, device=device)
    assert function.apply(x, 3.0, window).shape == (2, 3, 20, 20)  # no NegativeInput raised
    for row in (5, 40):  # row 40 lies in no window of a floor-mode 2x2/2 pooling of 41 rows
        bad = x.clone()
        bad[1, 2, row, 7] = -0.5
        with pytest.raises(NegativeInput):
            function.apply(bad, 3.0, window)
        torch.testing.assert_close(
            p_pool2d(bad, 3.0, 2, backend=backend), p_pool2d(bad, 3.0, 2, backend="reference"), rtol=1e-5, atol=1e-6
        )
