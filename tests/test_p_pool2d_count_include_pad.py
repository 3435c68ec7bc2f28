"""``count_include_pad=False`` for P-pooling (issue 17), in every backend: against ``avg_pool2d(count_include_pad=False)``
at alpha = 0 (values and gradients), and at alpha > 0 against an independent float64 reference that pools only the
input elements of each window (unfold, with the padding and the ceil-mode overhang marked as absent)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from polypool.pooling import PPool2d, cpu_fused, p_pool2d, triton_fused
from polypool.pooling.fused_interface import runs_through
from polypool.pooling.geometry import Window

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PADDED = [(k, s, 1, c) for k, s, c in itertools.product([2, 3], [1, 2, 3], [False, True])]
BACKENDS = [
    pytest.param("reference", "PPool2d", id="reference"),
    pytest.param(
        "cpu_fused",
        "PPool2dCPU",
        id="cpu_fused",
        marks=pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0"),
    ),
    pytest.param(
        "triton",
        "PPool2dTriton",
        id="triton",
        marks=pytest.mark.skipif(not triton_fused.enabled(), reason="POLYPOOL_TRITON=0"),
    ),
]


def excluded_reference(x: torch.Tensor, alpha: torch.Tensor, window: Window) -> torch.Tensor:
    """sum x^(a+1) / sum x^a over the input elements of each window only, in float64 (x > 0)."""
    (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
    n, c, height, width = x.shape
    out_h, out_w = window.output_size(height, width)
    over_h, over_w = window.overhang(height, width)
    xp = F.pad(x.double(), (pw, pw + over_w, ph, ph + over_h), value=float("nan"))
    cols = F.unfold(xp.reshape(n * c, 1, *xp.shape[-2:]), (kh, kw), stride=(sh, sw))  # (NC, kh*kw, L)
    cols = cols.reshape(n, c, kh * kw, out_h, out_w)
    present = ~torch.isnan(cols)
    values = torch.where(present, cols, torch.ones_like(cols))
    a = alpha.double().reshape(*alpha.shape[:-2], 1, *alpha.shape[-2:]) if alpha.dim() >= 2 else alpha.double()
    powers = torch.where(present, values.pow(a), torch.zeros_like(values))
    return (powers * values).sum(dim=2) / powers.sum(dim=2)


@pytest.mark.parametrize("backend,function_name", BACKENDS)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", PADDED)
def test_alpha_zero_is_avg_pool2d_without_padding(backend, function_name, kernel, stride, padding, ceil_mode):
    x = torch.rand(2, 3, 9, 8, device=DEVICE)
    x[x < 0.3] = 0  # zeros count as elements at alpha = 0 (0^0 = 1)
    x[0, 0] = 0  # all-zero windows
    alpha = torch.zeros(3, 1, 1, device=DEVICE, requires_grad=True)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y = p_pool2d(xa, alpha, kernel, stride, padding, ceil_mode, backend=backend, count_include_pad=False)
    assert runs_through(y, function_name)
    want = F.avg_pool2d(xb, kernel, stride, padding, ceil_mode, count_include_pad=False)
    assert not torch.allclose(want, F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad=True))
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    grad = torch.rand_like(want)
    y.backward(grad)
    want.backward(grad)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,function_name", BACKENDS)
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", PADDED)
def test_alpha_positive_against_the_excluded_reference(backend, function_name, kernel, stride, padding, ceil_mode):
    """Values and both gradients; alpha dense, with 0 < alpha < 1 and alpha = 1 in places. Inputs away from zero, so
    that the float64 reference's own autograd gradient is finite everywhere."""
    window = Window.make(kernel, stride, padding, ceil_mode)
    x = torch.rand(2, 3, 9, 8) * 2 + 0.05
    out_h, out_w = window.output_size(9, 8)
    alpha = torch.rand(2, 3, out_h, out_w) * 20
    alpha[0, 0, 0, 0], alpha[0, 1, 0, 0] = 0.5, 1.0
    xa = x.clone().to(DEVICE).requires_grad_(True)
    aa = alpha.clone().to(DEVICE).requires_grad_(True)
    y = p_pool2d(xa, aa, kernel, stride, padding, ceil_mode, backend=backend, count_include_pad=False)
    assert runs_through(y, function_name)
    xb, ab = x.double().requires_grad_(True), alpha.double().requires_grad_(True)
    want = excluded_reference(xb, ab, window)
    torch.testing.assert_close(y.double().cpu(), want, rtol=2e-5, atol=1e-6)
    grad = torch.rand(want.shape, dtype=torch.float64)
    y.backward(grad.float().to(DEVICE))
    want.backward(grad)
    torch.testing.assert_close(xa.grad.double().cpu(), xb.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(aa.grad.double().cpu(), ab.grad, rtol=1e-3, atol=1e-3 * ab.grad.abs().max().item())


def test_excluding_changes_nothing_without_padding_or_at_alpha_above_zero_on_positive_windows():
    """Padded zeros add 0 to both sums when alpha > 0, so only alpha = 0, all-zero windows and shifted windows see
    the flag; without padding it changes nothing at all."""
    x = torch.rand(2, 3, 9, 8) + 0.1
    for backend in ("reference", "auto"):
        torch.testing.assert_close(
            p_pool2d(x, 5.0, 3, 2, 1, backend=backend, count_include_pad=False),
            p_pool2d(x, 5.0, 3, 2, 1, backend=backend),
            rtol=1e-5,
            atol=1e-6,
        )
        torch.testing.assert_close(
            p_pool2d(x, 0.0, 3, 2, 0, True, backend=backend, count_include_pad=False),
            p_pool2d(x, 0.0, 3, 2, 0, True, backend=backend),
            rtol=1e-5,
            atol=1e-6,
        )


def test_negative_windows_count_the_padding_as_avg_pool2d_does():
    """A window with a negative element is shifted up by its own minimum; a padded zero stays a zero of the window
    (count_include_pad) or is not in it: at alpha = 0 it is avg_pool2d either way."""
    x = torch.rand(1, 2, 7, 7) - 0.5
    for backend in ("reference", "auto"):
        for include_pad in (True, False):
            torch.testing.assert_close(
                p_pool2d(x, 0.0, 3, 2, 1, backend=backend, count_include_pad=include_pad),
                F.avg_pool2d(x, 3, 2, 1, count_include_pad=include_pad),
                rtol=1e-5,
                atol=1e-6,
            )


def test_layer_and_3d_input():
    layer = PPool2d(3, 2, 1, alpha_init=0.0, alpha_range=(0.0, 1.0), count_include_pad=False)
    assert "count_include_pad=False" in repr(layer)
    x = torch.rand(3, 9, 8)
    torch.testing.assert_close(layer(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    torch.testing.assert_close(
        p_pool2d(x, 0.0, 3, 2, 1, count_include_pad=False), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    )
