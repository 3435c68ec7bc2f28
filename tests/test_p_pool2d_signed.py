"""P-pooling of inputs the paper's formula does not cover: negative values, +-inf, NaN, and alpha = inf.

The reference here is written from the definition, window by window, in float64: a window with a negative
element is shifted by its own minimum s = min(0, window min), y = s + sum (x-s)^(a+1) / sum (x-s)^a. Nothing
outside a window may change its output, in any backend (issue #32 section 5: the authors' per-map shift moved
every window of a map with one outlier).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polypool.pooling import cpu_fused, p_pool2d, triton_fused
from polypool.pooling.dense_alpha import dense_p_pool2d
from polypool.pooling.geometry import Window

BACKENDS = ["reference", "cpu_fused", "triton", "auto"]


def served(backend: str, x: torch.Tensor, alpha=3.0) -> bool:
    if backend == "cpu_fused":
        return cpu_fused.supports(x, alpha)
    if backend == "triton":
        return triton_fused.supports(x, alpha, allow_cpu=True)
    return True


def need(backend: str, x: torch.Tensor, alpha=3.0) -> None:
    if not served(backend, x, alpha):
        pytest.skip(f"backend {backend!r} does not serve a {x.dtype} tensor on {x.device} here")


def window_elements(x: torch.Tensor, window: Window, include_pad: bool, i: int, j: int) -> torch.Tensor:
    """The elements of output (i, j)'s window of a 2-D x: padding zeros when ``include_pad``, never the ceil-mode
    overhang (as avg_pool2d)."""
    (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
    height, width = x.shape
    values = []
    for r in range(i * sh - ph, i * sh - ph + kh):
        for c in range(j * sw - pw, j * sw - pw + kw):
            if 0 <= r < height and 0 <= c < width:
                values.append(x[r, c])
            elif include_pad and -ph <= r < height + ph and -pw <= c < width + pw:
                values.append(torch.zeros((), dtype=x.dtype))
    return torch.stack(values)


def per_window_reference(x, alpha, kernel, stride=None, padding=0, ceil_mode=False, include_pad=True):
    """y = s + sum (e-s)^(a+1) / sum (e-s)^a over each window's elements e, s = min(0, min e); float64, finite x,
    differentiable (autograd through s, the window's own minimum)."""
    window = Window.make(kernel, stride, padding, ceil_mode)
    x = x.double()
    n, c, height, width = x.shape
    out_h, out_w = window.output_size(height, width)
    out = []
    for b in range(n):
        for ch in range(c):
            a = alpha[ch].double() if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha)).double()
            for i in range(out_h):
                for j in range(out_w):
                    e = window_elements(x[b, ch], window, include_pad, i, j)
                    s = e.min().clamp(max=0)
                    u = e - s
                    # (u / max u)^a, with 0^a = 1 at a = 0, else 0 (and no 0 * inf in the gradient at u = 0). y is the
                    # same with or without dividing by max u; dy/da at a = 0, where the zeros' -inf is dropped (the
                    # README's convention), is the max-normalised form's
                    u_max = u.max()
                    r = u / torch.where(u_max > 0, u_max, 1.0)
                    p = torch.where(r > 0, torch.where(r > 0, r, 1.0) ** a, (a == 0).double())
                    out.append(s + (p * u).sum() / p.sum())
    return torch.stack(out).view(n, c, out_h, out_w)


def test_the_issue_example_pools_each_window_on_its_own():
    """#32's repro: a -1e4 (or -1e8) in the first window left [1, 2, 3, 4] at 2.50 and [5, 6, 7, 8] at 6.50 (0.0
    with -1e8) instead of their own P-pooling; -inf made every window NaN, +inf gave NaN where max_pool2d gives inf."""
    x = torch.tensor([[-1e4, 0, 1, 2, 5, 6], [0, 0, 3, 4, 7, 8.0]]).view(1, 1, 2, 6)
    alone = [
        p_pool2d(torch.tensor([1, 2, 3, 4.0]).view(1, 1, 2, 2), 30.0, 2).item(),
        p_pool2d(torch.tensor([5, 6, 7, 8.0]).view(1, 1, 2, 2), 30.0, 2).item(),
    ]
    assert alone[0] > 3.99 and alone[1] > 7.98  # close to the max at alpha = 30
    for backend in BACKENDS:
        need(backend, x, 30.0)
        for outlier in (-1e4, -1e8, -math.inf):
            x[0, 0, 0, 0] = outlier
            y = p_pool2d(x, 30.0, 2, backend=backend).flatten().tolist()
            assert y[1:] == alone, (backend, outlier, y)
            assert y[0] == 0.0, (backend, outlier, y)  # [outlier, 0, 0, 0]: the zeros (weight 0 for the minimum)
        positive = x.abs()
        positive[0, 0, 0, 0] = math.inf
        y = p_pool2d(positive, 30.0, 2, backend=backend).flatten().tolist()
        assert y == [math.inf, *alone], (backend, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode,include_pad",
    [
        (2, 2, 0, False, True),
        (3, 2, 1, False, True),
        (3, 2, 1, True, True),
        (3, 2, 1, True, False),
        (3, 1, 1, False, False),
    ],
)
def test_signed_inputs_equal_the_per_window_definition(backend, kernel, stride, padding, ceil_mode, include_pad):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 7, 9, generator=gen) * 2
    x[1, 2] = x[1, 2].abs() + 0.1  # a map without negatives
    alpha = torch.tensor([0.0, 2.5, 30.0]).view(3, 1, 1)
    need(backend, x, alpha)
    y = p_pool2d(x, alpha, kernel, stride, padding, ceil_mode, backend=backend, count_include_pad=include_pad)
    want = per_window_reference(x, alpha.flatten(), kernel, stride, padding, ceil_mode, include_pad)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_element_changes_only_the_windows_that_hold_it(backend):
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(1, 2, 8, 8, generator=gen) * 4
    x[0, 1] -= 1.0  # signed map beside a non-negative one
    need(backend, x, 30.0)
    before = p_pool2d(x, 30.0, 3, 2, 1, backend=backend)
    for value in (-1e4, -1e8, -math.inf, math.inf, math.nan):
        changed = x.clone()
        changed[0, 0, 5, 5] = value  # in output rows/cols 2 and 3 (windows start at 2*i - 1)
        after = p_pool2d(changed, 30.0, 3, 2, 1, backend=backend)
        holds = torch.zeros_like(before, dtype=torch.bool)
        holds[0, 0, 2:4, 2:4] = True
        assert torch.equal(after[~holds], before[~holds]), (backend, value)  # bit for bit
        assert not torch.equal(after[holds], before[holds]), (backend, value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_on_signed_inputs(backend):
    """float64: gradcheck of the reference path, the shift's own gradient included; the fused backends (fp32)
    give the same gradients as the per-window definition."""
    gen = torch.Generator().manual_seed(5)
    if backend == "reference":
        x = torch.randn(1, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
        a = torch.tensor([1.5, 7.0], dtype=torch.float64).view(2, 1, 1).requires_grad_()
        assert torch.autograd.gradcheck(lambda x, a: p_pool2d(x, a, 3, 2, 1, backend=backend), (x, a))
        return
    x = torch.randn(2, 3, 7, 8, generator=gen)
    x[0, 0] = x[0, 0].abs()  # windows the kernel serves next to windows it hands over
    a = torch.tensor([0.0, 0.5, 20.0]).view(3, 1, 1)  # at 0, only a rounding could give the minimum a weight
    need(backend, x, a)
    x.requires_grad_(True)
    a.requires_grad_(True)
    grad = torch.randn(2, 3, 4, 4, generator=gen)
    torch.autograd.backward(p_pool2d(x, a, 3, 2, 1, backend=backend), grad)
    x64, a64 = x.detach().double().requires_grad_(), a.detach().double().requires_grad_()
    torch.autograd.backward(per_window_reference(x64, a64.flatten(), 3, 2, 1), grad.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_alpha_zero_is_avg_pool2d_and_alpha_inf_is_the_max_for_signed_inputs(backend, include_pad):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 9, 9, generator=gen)
    need(backend, x, 0.0)
    y = p_pool2d(x, 0.0, 3, 2, 1, True, backend=backend, count_include_pad=include_pad)
    torch.testing.assert_close(y, F.avg_pool2d(x, 3, 2, 1, True, count_include_pad=include_pad))
    # the a -> inf limit: the window max, a padded zero being an element of the window when it counts
    x.requires_grad_(True)
    y = p_pool2d(x, math.inf, 3, 2, 1, True, backend=backend, count_include_pad=include_pad)
    want = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    if include_pad:
        has_pad = F.avg_pool2d(torch.ones(1, 1, 9, 9), 3, 2, 1, True) < 1
        want = torch.where(has_pad, want.clamp(min=0), want)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.sum() > 0  # max_pool2d's gradient, not NaN


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_inf_is_max_pooling_in_every_backend(backend):
    """#32: alpha=inf gave the max in the reference op and NaN in the default CPU backend."""
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    need(backend, x, 1.0)
    x.requires_grad_(True)
    y = p_pool2d(x, math.inf, 2, backend=backend)
    want = F.max_pool2d(x, 2)
    assert torch.equal(y, want)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gw,) = torch.autograd.grad(want.sum(), x)
    assert torch.equal(gx, gw)


def test_a_tensor_alpha_with_inf_is_refused_with_check():
    x = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError, match="finite.*float\\('inf'\\) is max pooling"):
        p_pool2d(x, torch.tensor([1.0, math.inf]).view(2, 1, 1), 2, check=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [0.0, 4.0])
def test_non_finite_inputs_give_the_limits_window_by_window(backend, alpha):
    """+inf: +inf (max_pool2d's and avg_pool2d's); NaN: NaN; -inf: avg_pool2d's -inf at alpha = 0, left out at
    alpha > 0 (the window pools its finite elements), -inf for a window of -inf only; +inf beside -inf at alpha = 0:
    avg_pool2d's NaN. Every other window as without them."""
    base = torch.rand(1, 1, 4, 8, generator=torch.Generator().manual_seed(9)) + 0.5
    need(backend, base, alpha)
    x = base.clone()
    x[0, 0, 0, 0] = math.inf  # window 0
    x[0, 0, 1, 2] = math.nan  # window 1
    x[0, 0, 0, 4] = -math.inf  # window 2
    x[0, 0, 0:2, 6:8] = -math.inf  # window 3: -inf only
    x[0, 0, 2, 0] = math.inf  # window 4: +inf and -inf
    x[0, 0, 3, 1] = -math.inf
    y = p_pool2d(x, alpha, 2, backend=backend)[0, 0].flatten()
    assert y[0] == math.inf and math.isnan(y[1]) and y[3] == -math.inf
    finite_rest = x[0, 0, 0:2, 4:6].flatten()[1:].view(1, 1, 1, 3)
    want2 = -math.inf if alpha == 0 else p_pool2d(finite_rest, alpha, (1, 3)).item()
    assert y[2].item() == pytest.approx(want2, rel=1e-6)
    assert math.isnan(y[4]) if alpha == 0 else y[4] == math.inf
    clean = p_pool2d(base, alpha, 2, backend=backend)[0, 0].flatten()
    assert torch.equal(y[5:], clean[5:])
    # against torch's poolings where they define the answer
    if alpha == 0:
        torch.testing.assert_close(y, F.avg_pool2d(x, 2)[0, 0].flatten(), equal_nan=True)
    assert y[0] == F.max_pool2d(x, 2)[0, 0].flatten()[0]


def test_precision_is_the_windows_own():
    """With a far minimum, s + P(x - s) in fp32 loses the window's values in x - s; the op keeps them."""
    x = torch.tensor([-1e8, 1.0, 2.0, 3.0]).view(1, 1, 2, 2)
    want = per_window_reference(x, 30.0, 2).item()
    assert want == pytest.approx(2.0, abs=1e-6)
    for backend in BACKENDS:
        need(backend, x, 30.0)
        assert p_pool2d(x, 30.0, 2, backend=backend).item() == pytest.approx(want, abs=1e-6), backend


def test_dense_alpha_with_non_finite_inputs_takes_the_unfused_path():
    x = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(10)) + 0.1
    x[0, 0, 5, 5] = math.inf
    conv = torch.full((2, 1, 2, 2), 0.1)
    prelu, proj_w, proj_b = torch.full((2,), 0.25), torch.ones(2, 1, 1, 1), torch.full((2,), 5.0)
    fused = dense_p_pool2d(x, conv, prelu, proj_w, proj_b, 2)
    unfused = dense_p_pool2d(x, conv, prelu, proj_w, proj_b, 2, fused=False)
    torch.testing.assert_close(fused, unfused, equal_nan=True)
    y = fused[0][0]
    assert y[0, 2, 2] == math.inf  # the window with +inf (the kernel's arithmetic gives NaN there)
    y[0, 2, 2] = 0.0
    assert y.isfinite().all()  # every other window


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_windows_beside_signed_ones_keep_finite_gradients(backend):
    """The signed path also runs over the windows a backend serves (its result there is not used): its backward
    must not put 0 * inf = NaN into them. A window of values near 1e-25 (its span squared underflows) and one with a
    subnormal ratio at alpha < 1, each next to a window with a negative element."""
    for values, alpha in (([1e-25, 2e-25, -1.0, 2.0], 3.0), ([1e-45, 0.5, -1.0, 2.0], 0.01)):
        x = torch.tensor(values).view(1, 1, 1, 4)
        a = torch.tensor(alpha)
        need(backend, x, a)
        x.requires_grad_(True)
        a.requires_grad_(True)
        p_pool2d(x, a, (1, 2), backend=backend).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(a.grad), (values, x.grad, a.grad)
    # a window of close negatives, its zero padding left out: the padding's r would be far above 1 (poolformer's
    # token mixer pools so; its alpha gradient was NaN)
    x = torch.tensor([[-1.2003, -1.1664], [-1.1595, -1.1528]]).view(1, 1, 2, 2)
    a = torch.tensor(30.0)
    need(backend, x, a)
    x.requires_grad_(True)
    a.requires_grad_(True)
    p_pool2d(x, a, 3, 1, 1, backend=backend, count_include_pad=False).square().sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(a.grad), (x.grad, a.grad)


@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode,include_pad",
    [(2, 2, 0, False, True), (3, 2, 1, True, True), (3, 2, 1, True, False), (3, 1, 1, False, False)],
)
def test_the_traced_form_equals_the_eager_one(kernel, stride, padding, ceil_mode, include_pad):
    """torch.compile/torch.export trace the unfolded form; eager calls run the offset loop: same numbers and
    gradients, non-finite inputs and per-channel and dense alpha included."""
    from polypool.pooling.signed import signed_p_pool2d, signed_p_pool2d_unfolded

    window = Window.make(kernel, stride, padding, ceil_mode)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 7, 9, generator=gen, dtype=torch.float64)
    x[0, 1, 2, 3], x[1, 0, 4, 4], x[1, 2, 0, 0], x[0, 0, 6, 8] = math.inf, -math.inf, math.nan, -math.inf
    out_h, out_w = window.output_size(7, 9)
    for alpha in (
        torch.tensor([0.0, 2.5, 30.0], dtype=torch.float64).view(3, 1, 1),
        torch.rand(2, 3, out_h, out_w, generator=gen, dtype=torch.float64) * 10,
        4.0,
    ):
        results = []
        for form in (signed_p_pool2d, signed_p_pool2d_unfolded):
            xx = x.clone().requires_grad_(True)
            aa = alpha.clone().requires_grad_(True) if isinstance(alpha, torch.Tensor) else alpha
            y, needed = form(xx, aa, window, include_pad)
            torch.where(torch.isfinite(y), y, 0.0).sum().backward()
            results.append((y, needed, xx.grad, aa.grad if isinstance(aa, torch.Tensor) else None))
        (y1, n1, gx1, ga1), (y2, n2, gx2, ga2) = results
        assert torch.equal(n1, n2)
        torch.testing.assert_close(y1, y2, equal_nan=True)
        torch.testing.assert_close(gx1, gx2, equal_nan=True)
        if ga1 is not None:
            torch.testing.assert_close(ga1, ga2)
