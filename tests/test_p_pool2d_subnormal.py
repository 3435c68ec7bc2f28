"""Subnormal inputs (|x| < 1.18e-38 in fp32) in every backend: finite values and gradients, no NaN.

A window max of 2e-39 made 1/m overflow (y = NaN where max_pool2d gives 2e-39), and at alpha = 0 an element of
1e-40 made a 0 * inf in dx. The rule now, in all three backends: a window max, an element or a ratio x/m below the
smallest normal number counts as 0 (what a GPU that flushes denormals does anyway), and the alpha q p/r term of dx
is 0 where alpha = 0.
"""

import pytest
import torch

from polypool.pooling import cpu_fused, p_pool2d, triton_fused

TINY = torch.finfo(torch.float32).tiny
BACKENDS = ["reference", "cpu_fused", "triton"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def skip_unavailable(backend):
    if backend == "cpu_fused" and not cpu_fused.enabled():
        pytest.skip("POLYPOOL_CPU_KERNEL=0")
    if backend == "triton" and not triton_fused.enabled():
        pytest.skip("POLYPOOL_TRITON=0")


def pool(x, alpha, backend, dtype=torch.float32):
    device = DEVICE if backend == "triton" else "cpu"
    x = x.to(device=device, dtype=dtype).clone().requires_grad_(True)
    alpha = alpha.to(device) if isinstance(alpha, torch.Tensor) else alpha
    y = p_pool2d(x, alpha, 2, backend=backend)
    y.backward(torch.ones_like(y))
    return y.detach().float().cpu(), x.grad.float().cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [3.0, 0.0, 0.5, "channel"])
def test_subnormal_window_max_gives_zero_not_nan(backend, alpha):
    """Every element of the window subnormal: the window is all zeros after the flush, so y = 0 and dx is the
    average-pooling gradient (where max_pool2d returns 2e-39: the flush is the one difference)."""
    skip_unavailable(backend)
    x = torch.full((1, 2, 2, 4), 1e-39)
    x[..., 0, 0] = 2e-39
    x[..., 2:] = torch.tensor([[0.5, 1.0], [0.25, 0.0]])  # a normal window beside it
    a = torch.tensor([[[3.0]], [[0.0]]]) if alpha == "channel" else alpha
    y, dx = pool(x, a, backend)
    assert torch.isfinite(y).all() and torch.isfinite(dx).all(), (y, dx)
    assert (y[..., 0, 0] == 0).all()
    torch.testing.assert_close(dx[..., :2], torch.full((1, 2, 2, 2), 0.25))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("element", [1e-40, 1e-30])  # subnormal x; normal x whose ratio x/m = 1e-40 is subnormal
def test_alpha_zero_with_a_subnormal_element_or_ratio(backend, element):
    """alpha = 0 is average pooling: dx = 1/4 for every element of a 2x2 window, also for a tiny one."""
    skip_unavailable(backend)
    scale = 1.0 if element < TINY else 1e10
    x = torch.tensor([[[[1.0 * scale, element], [0.5 * scale, 0.25 * scale]]]])
    for alpha in (0.0, torch.tensor(0.0), torch.zeros(1, 1, 1, 1)):
        y, dx = pool(x, alpha, backend)
        assert torch.isfinite(dx).all(), (backend, alpha, dx)
        torch.testing.assert_close(dx, torch.full_like(dx, 0.25))
        torch.testing.assert_close(y, x.mean().reshape(1, 1, 1, 1), rtol=1e-6, atol=0)
    for alpha in (0.5, 1.0, 30.0):  # the other regimes of r^(a-1) at a flushed r: finite as well
        y, dx = pool(x, alpha, backend)
        assert torch.isfinite(y).all() and torch.isfinite(dx).all(), (backend, alpha, dx)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bf16_subnormals(backend):
    """bf16 shares fp32's exponent range, so it has the same subnormals (fp16's are normal numbers in fp32)."""
    skip_unavailable(backend)
    x = torch.full((1, 1, 2, 2), 1e-39)
    x[..., 0, 0] = 2e-39
    y, dx = pool(x, 3.0, backend, dtype=torch.bfloat16)
    assert (y == 0).all() and torch.isfinite(dx).all()
    x = torch.tensor([[[[1.0, 1e-40], [0.5, 0.25]]]])
    y, dx = pool(x, 0.0, backend, dtype=torch.bfloat16)
    torch.testing.assert_close(dx, torch.full_like(dx, 0.25))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha,element", [(1.01, 2e-38), (1.1, 2e-38), (1.2, 2.0**-106)])
def test_alpha_just_above_one_keeps_the_r_to_the_a_minus_one_term(backend, alpha, element):
    """An element beside 1 whose ratio r is a normal float while r^a is not (a > 1): the C++ kernel writes r^a as 0,
    as a GPU's exp2 flushes it. The element's dx = (a + 1) r^a - a q r^(a-1) (over den) keeps its second term:
    r^(a-1) is 0.42 at a = 1.01 and r = 2e-38, and 4e-7 at a = 1.2 and r = 2^-106 (where 2^-126 (a-1) is negligible,
    but not 2^-106 (a-1)); taken as r^a / r it was 0. (Triton's CPU interpreter computes in numpy, which keeps the
    subnormal r^a: there the test passes either way; on a GPU it checks the kernel.)"""
    skip_unavailable(backend)
    x = torch.tensor([[[[1.0, element], [0.5, 0.25]]]])
    _, dx = pool(x, alpha, backend)
    x_ref = x.double().requires_grad_(True)
    y_ref = p_pool2d(x_ref, alpha, 2, backend="reference")
    y_ref.backward(torch.ones_like(y_ref))
    atol = 1e-7
    assert x_ref.grad[0, 0, 0, 1].abs() > 2 * atol  # the term this is about, above the tolerance
    torch.testing.assert_close(dx.double(), x_ref.grad, rtol=1e-5, atol=atol)
