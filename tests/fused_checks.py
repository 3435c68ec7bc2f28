"""Shared checks of the fused P-pooling kernels (C++ CPU, Triton) against the reference op."""

import torch

from polypool.pooling import p_pool2d


def runs_through(y: torch.Tensor, function_name: str) -> bool:
    """Whether the autograd graph of y runs through the autograd Function called ``function_name``."""
    stack, seen = [y.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if function_name in type(node).__name__:
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False


def compare_to_reference(x, alpha, kernel, stride, padding, ceil_mode, *, backend: str, function_name: str,
                         rtol: float = 1e-5):
    """The fused backend's values and gradients against the reference op's on the same input.

    The reference runs in fp32 on the same values (for fp16/bf16 inputs: the rounded ones), so for low precision
    ``rtol`` should be the dtype's rounding. Values to rtol; input gradients to rtol plus the fp32 conditioning of
    (a+1) - a q / r, about a * eps; alpha gradients (sums of terms that cancel) on the scale of their maximum.
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
    conditioning = 2 * max(a_max, 1.0) * torch.finfo(torch.float32).eps * grad.abs().max().item()
    torch.testing.assert_close(x.grad.float(), x_ref.grad, rtol=rtol, atol=1e-5 + conditioning)
    if isinstance(alpha, torch.Tensor):
        scale = a_ref.grad.abs().max().item()
        torch.testing.assert_close(a.grad, a_ref.grad, rtol=max(rtol, 1e-4), atol=max(rtol, 1e-4) * scale + 1e-6)
