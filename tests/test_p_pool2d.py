"""The P-pooling op against its definition, the paper's propositions, and torch's poolings."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from polypool.pooling import cpu_fused, p_pool2d
from polypool.pooling.geometry import Window

# kernel 2-3, stride 1-3, padding 0-1, ceil_mode on/off (padding <= kernel // 2 always holds here)
GRID = list(itertools.product([2, 3], [1, 2, 3], [0, 1], [False, True]))
GRID_IDS = [f"k{k}s{s}p{p}{'c' if c else ''}" for k, s, p, c in GRID]
ODD_SHAPE = (3, 2, 7, 10)  # batch > 1, odd and non-square


def loop_reference(x, alpha, kernel, stride, padding, ceil_mode):
    """sum x^(a+1) / sum x^a, window by window, straight from the definition (float64, differentiable)."""
    window = Window.make(kernel, stride, padding, ceil_mode)
    (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
    n, c, h, w = x.shape
    out_h, out_w = window.output_size(h, w)
    xp = F.pad(x, (pw, pw, ph, ph))  # zeros; a ceil-mode window stops at the padded border
    alpha = torch.as_tensor(alpha, dtype=x.dtype).expand(n, c, out_h, out_w)
    rows = []
    for i in range(out_h):
        cols = []
        for j in range(out_w):
            patch = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw].flatten(2)
            a = alpha[:, :, i, j, None]
            cols.append((patch ** (a + 1)).sum(-1) / (patch**a).sum(-1))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def convention_alpha_grad(x, alpha, kernel, stride, padding):
    """dy/dalpha = m sum_i w_i (r_i - q) ln r_i per window (float64, floor mode; r = x/m, q = y/m, w = r^a / sum r^a)
    with 0 ln 0 := 0: the documented formula and convention. At alpha = 0 a zero in a window makes the true
    one-sided derivative infinite (0^0 = 1 but 0^a = 0 for a > 0), and the convention's value then depends on the
    normalisation (m sum w (r - q) ln r is sum w (x - y) ln x only where no zero is dropped), so there the
    documented max-normalised form, not autograd of the definition, is what the op must compute."""
    n, c, h, w = x.shape
    out_h, out_w = Window.make(kernel, stride, padding, False).output_size(h, w)
    cols = F.unfold(x.double(), kernel, padding=padding, stride=stride).view(n, c, kernel * kernel, -1)
    m = cols.amax(2, keepdim=True)
    r = cols / m
    p = r**alpha
    q = (p * r).sum(2, keepdim=True) / p.sum(2, keepdim=True)
    log = torch.where(r > 0, r.clamp(min=1e-300).log(), 0.0)
    return (m[:, :, 0] * (p * (r - q) * log).sum(2) / p.sum(2)).view(n, c, out_h, out_w)


def distinct_positive(shape, gap=0.05, seed=None):
    """Positive values with no ties and a gap between them, so the arg-max of every window is unique."""
    n = torch.Size(shape).numel()
    return (1.0 + gap * torch.randperm(n).to(torch.float64)).reshape(shape)


def test_authors_test_vector():
    # docs/paper_notes.md: the test vector from the authors' repositories, verified against the exact formula.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    alpha = torch.full((1, 1, 3, 3), 2.0, dtype=torch.float64, requires_grad=True)
    y = p_pool2d(x, alpha, 2, 1, 1)
    y.sum().backward()
    torch.testing.assert_close(
        y.detach(),
        torch.tensor([[[[1, 1.8, 2], [2.8, 3.3333, 3.6], [3, 3.64, 4]]]], dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(
        alpha.grad,
        torch.tensor([[[[0, 0.11090, 0], [0.19775, 0.25982, 0.22181], [0, 0.06628, 0]]]], dtype=torch.float64),
        atol=1e-4,
        rtol=0,
    )
    torch.testing.assert_close(
        x.grad, torch.tensor([[[[0.4978, 1.7956], [2.4597, 3.4263]]]], dtype=torch.float64), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", GRID, ids=GRID_IDS)
def test_prop1_alpha_zero_is_average_pooling(kernel, stride, padding, ceil_mode):
    x = torch.rand(ODD_SHAPE, dtype=torch.float64)
    x[0, 0, :2] = 0  # exact zeros count as elements at alpha = 0 (0^0 = 1)
    x.requires_grad_(True)
    x_avg = x.detach().clone().requires_grad_(True)
    y = p_pool2d(x, 0.0, kernel, stride, padding, ceil_mode)
    y_avg = F.avg_pool2d(x_avg, kernel, stride, padding, ceil_mode, count_include_pad=True)
    assert y.shape == y_avg.shape
    torch.testing.assert_close(y, y_avg, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_avg.backward(grad)
    torch.testing.assert_close(x.grad, x_avg.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", GRID, ids=GRID_IDS)
def test_prop2_large_alpha_is_max_pooling(kernel, stride, padding, ceil_mode):
    x = distinct_positive(ODD_SHAPE).requires_grad_(True)
    x_max = x.detach().clone().requires_grad_(True)
    y = p_pool2d(x, 1e4, kernel, stride, padding, ceil_mode)
    y_max = F.max_pool2d(x_max, kernel, stride, padding, ceil_mode=ceil_mode)
    assert y.shape == y_max.shape
    torch.testing.assert_close(y, y_max, rtol=1e-6, atol=0)
    grad = torch.rand_like(y) + 0.5
    y.backward(grad)
    y_max.backward(grad)  # the gradient goes to each window's arg-max
    torch.testing.assert_close(x.grad, x_max.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha_shape", ["layer", "channel", "dense"])
@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode", [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False), (2, 3, 1, True)]
)
def test_matches_float64_loop_reference(alpha_shape, kernel, stride, padding, ceil_mode):
    x = (torch.rand(ODD_SHAPE, dtype=torch.float64) + 0.05).requires_grad_(True)
    out_h, out_w = Window.make(kernel, stride, padding, ceil_mode).output_size(*ODD_SHAPE[2:])
    shape = {"layer": (), "channel": (ODD_SHAPE[1], 1, 1), "dense": (ODD_SHAPE[0], ODD_SHAPE[1], out_h, out_w)}
    alpha = (0.5 + 3.5 * torch.rand(shape[alpha_shape], dtype=torch.float64)).requires_grad_(True)
    y = p_pool2d(x, alpha, kernel, stride, padding, ceil_mode)
    y_ref = loop_reference(x, alpha, kernel, stride, padding, ceil_mode)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(y)
    gx, ga = torch.autograd.grad(y, (x, alpha), grad)
    gx_ref, ga_ref = torch.autograd.grad(y_ref, (x, alpha), grad)
    assert ga.shape == alpha.shape
    torch.testing.assert_close(gx, gx_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ga, ga_ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("alpha_shape", ["layer", "channel", "dense"])
def test_gradcheck_x_and_alpha(alpha_shape):
    x = (torch.rand(2, 3, 5, 6, dtype=torch.float64) + 0.1).requires_grad_(True)
    shape = {"layer": (), "channel": (3, 1, 1), "dense": (2, 3, 3, 4)}[alpha_shape]
    alpha = (0.5 + 4 * torch.rand(shape, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, a: p_pool2d(x, a, 3, 2, 1, True), (x, alpha))


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_low_precision_large_alpha_large_activations(dtype, rtol):
    # 3e4^51 overflows every float format; the max-normalised form must not.
    x = (torch.rand(4, 8, 17, 17) * 3e4).to(dtype)
    x_ref = x.to(torch.float64).requires_grad_(True)
    x = x.requires_grad_(True)
    y = p_pool2d(x, 50.0, 3, 2, 1)
    y_ref = p_pool2d(x_ref, 50.0, 3, 2, 1)
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.to(torch.float64), y_ref.detach(), rtol=rtol, atol=0)
    grad = torch.rand(y.shape, dtype=torch.float64)
    y.backward(grad.to(dtype))
    y_ref.backward(grad)
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    # gradients are O(1) (sum of window weights = 1): compare with an absolute tolerance at the grad's scale
    torch.testing.assert_close(x.grad.to(torch.float64), x_ref.grad, rtol=rtol, atol=rtol * 4)


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 1.0, 1e4])
def test_extreme_alphas_match_their_limits_or_the_float64_loop_reference(alpha):
    # fp32 through the default backend; the expected values are independent of the op: average pooling at 0,
    # max pooling at 1e4 (distinct values, so every window has one arg-max), the float64 definition in between.
    x64 = distinct_positive((2, 4, 9, 9), gap=1.0)  # 1 .. 648: large activations
    x = x64.float().requires_grad_(True)
    alpha_t = torch.full((4, 1, 1), alpha, requires_grad=True)
    y = p_pool2d(x, alpha_t, 3, 2, 1)
    grad = torch.rand(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5
    y.backward(grad.float())
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(alpha_t.grad).all()
    x_ref = x64.clone().requires_grad_(True)
    if alpha == 1e4:
        y_ref = F.max_pool2d(x_ref, 3, 2, 1)
    elif alpha == 0.0:
        y_ref = F.avg_pool2d(x_ref, 3, 2, 1, count_include_pad=True)
    conditioning = 2 * max(alpha, 1.0) * torch.finfo(torch.float32).eps * 1.5  # fp32's (a+1) - a q / r
    if alpha in (0.0, 1e4):
        y_ref.backward(grad)
        torch.testing.assert_close(y.double(), y_ref.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=1e-4, atol=1e-5 + conditioning)
    if alpha < 1e4:  # the loop reference overflows float64 at 1e4 (648^1e4)
        a_ref = torch.full((4, 1, 1), alpha, dtype=torch.float64, requires_grad=True)
        y_ref = loop_reference(x_ref, a_ref, 3, 2, 1, False)
        (gx_ref,) = torch.autograd.grad(y_ref, x_ref, grad)
        torch.testing.assert_close(y.double(), y_ref.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(x.grad.double(), gx_ref, rtol=1e-4, atol=1e-5)
        ga_ref = (convention_alpha_grad(x64, alpha, 3, 2, 1) * grad).sum((0, 2, 3))[:, None, None]
        torch.testing.assert_close(alpha_t.grad.double(), ga_ref, rtol=1e-4, atol=1e-3)
    else:  # dy/dalpha = m sum w (r - q) ln r vanishes as every weight but the max's underflows
        assert alpha_t.grad.abs().max() < 1e-6


@pytest.mark.parametrize("backend,dtype", [("auto", torch.float32), ("reference", torch.float64)])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 30.0])
def test_all_zero_input_gives_zero_and_the_average_pooling_gradient(alpha, backend, dtype):
    x = torch.zeros(2, 3, 6, 7, dtype=dtype, requires_grad=True)
    alpha_t = torch.tensor(alpha, dtype=dtype, requires_grad=True)
    y = p_pool2d(x, alpha_t, 3, 2, 1, True, backend=backend)
    assert (y == 0).all()
    grad = torch.rand_like(y) + 0.5
    y.backward(grad)
    # the convention: an all-zero window back-propagates like average pooling (count_include_pad), and every
    # r is 1 there, so dy/dalpha = m sum w (r - q) ln r is exactly 0
    x_avg = torch.zeros(2, 3, 6, 7, dtype=dtype, requires_grad=True)
    F.avg_pool2d(x_avg, 3, 2, 1, True).backward(grad)
    torch.testing.assert_close(x.grad, x_avg.grad)
    assert alpha_t.grad.item() == 0


def relu_pattern(shape, dtype=torch.float64, seed=0):
    """Positive values with exact zeros at every third element (row-major): every window of >= 2 elements along a
    row holds a positive, so the definition's 0/0 never occurs, while most windows hold exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype) + 0.1
    flat = torch.arange(x[0, 0].numel()).reshape(shape[-2:])
    x[..., flat % 3 == 1] = 0
    return x


def covered(shape, kernel, stride, padding, ceil_mode):
    """The input elements that some window reads."""
    ones = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    (read,) = torch.autograd.grad(F.avg_pool2d(ones, kernel, stride, padding, ceil_mode).sum(), ones)
    return read > 0


ZERO_WINDOWS = [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False), (2, 1, 0, True)]


@pytest.mark.parametrize("alpha_kind", ["float", "tensor"])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", ZERO_WINDOWS)
def test_reference_op_at_exact_zeros_with_alpha_one(alpha_kind, kernel, stride, padding, ceil_mode):
    # alpha = 1: y = sum x^2 / sum x, and dy/dx_i = -y / sum x at x_i = 0 (r^(a-1) = 1 there), a finite value that
    # the loop reference's autograd (pow's gradient a * x^(a-1) with 0^0 = 1) gets right.
    x = relu_pattern(ODD_SHAPE).requires_grad_(True)
    assert (F.max_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode) > 0).all()
    alpha = torch.tensor(1.0, dtype=torch.float64, requires_grad=True) if alpha_kind == "tensor" else 1.0
    y = p_pool2d(x, alpha, kernel, stride, padding, ceil_mode, backend="reference")
    a_ref = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    y_ref = loop_reference(x, a_ref, kernel, stride, padding, ceil_mode)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grad = torch.rand(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    gx_ref, ga_ref = torch.autograd.grad(y_ref, (x, a_ref), grad)
    if alpha_kind == "tensor":
        gx, ga = torch.autograd.grad(y, (x, alpha), grad)
        torch.testing.assert_close(ga, ga_ref, rtol=1e-10, atol=1e-12)
    else:
        (gx,) = torch.autograd.grad(y, x, grad)
    read_zeros = (x.detach() == 0) & covered(ODD_SHAPE, kernel, stride, padding, ceil_mode)
    assert gx_ref[read_zeros].abs().min() > 1e-3  # the gradient of a zero that a window reads is not 0 at a = 1
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha_kind", ["float", "tensor"])
@pytest.mark.parametrize("alpha_value", [0.5, 0.01])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", ZERO_WINDOWS)
def test_reference_op_at_exact_zeros_with_alpha_below_one(alpha_kind, alpha_value, kernel, stride, padding, ceil_mode):
    # 0 < alpha < 1: the exact dy/dx_i at x_i = 0 is -inf; the documented convention (w_i = 0 contributes 0) gives
    # exactly 0 there. Everywhere else the gradient is the definition's, and dy/dalpha uses 0 ln 0 = 0.
    x = relu_pattern(ODD_SHAPE, seed=2).requires_grad_(True)
    alpha = (
        torch.tensor(alpha_value, dtype=torch.float64, requires_grad=True) if alpha_kind == "tensor" else alpha_value
    )
    y = p_pool2d(x, alpha, kernel, stride, padding, ceil_mode, backend="reference")
    a_ref = torch.tensor(alpha_value, dtype=torch.float64, requires_grad=True)
    y_ref = loop_reference(x, a_ref, kernel, stride, padding, ceil_mode)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    gx_ref, ga_ref = torch.autograd.grad(y_ref, (x, a_ref), grad)
    if alpha_kind == "tensor":
        gx, ga = torch.autograd.grad(y, (x, alpha), grad)
        torch.testing.assert_close(ga, ga_ref, rtol=1e-10, atol=1e-12)
    else:
        (gx,) = torch.autograd.grad(y, x, grad)
    zeros = x.detach() == 0
    read_zeros = zeros & covered(ODD_SHAPE, kernel, stride, padding, ceil_mode)
    assert read_zeros.sum() > 0 and not torch.isfinite(gx_ref[read_zeros]).any()  # what the convention replaces
    assert (gx[zeros] == 0).all()
    torch.testing.assert_close(gx[~zeros], gx_ref[~zeros], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 30.0])
def test_reference_op_with_some_all_zero_windows(alpha):
    # Non-overlapping 2x2 windows, a third of them all zeros: those give y = 0, the average-pooling gradient, and
    # no alpha gradient; every other window is the definition's (computed on a copy whose zero blocks are ones).
    x = torch.rand(2, 3, 8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.1
    blocks = torch.arange(20).reshape(4, 5) % 3 == 0  # output positions whose window is all zeros
    zero_in = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1)
    x[..., zero_in] = 0
    x[..., ~zero_in] *= torch.arange(80).reshape(8, 10)[~zero_in] % 2 == 0  # and exact zeros elsewhere
    x.requires_grad_(True)
    alpha_t = torch.full((2, 3, 4, 5), alpha, dtype=torch.float64, requires_grad=True)  # dense: one per window
    y = p_pool2d(x, alpha_t, 2, backend="reference")
    grad = torch.rand(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) + 0.5
    gx, ga = torch.autograd.grad(y, (x, alpha_t), grad)
    assert (y[..., blocks] == 0).all() and (ga[..., blocks] == 0).all()
    torch.testing.assert_close(
        gx[..., zero_in], (grad / 4).repeat_interleave(2, 2).repeat_interleave(2, 3)[..., zero_in], rtol=1e-12, atol=0
    )
    filled = torch.where(zero_in, 1.0, x.detach()).requires_grad_(True)
    a_ref = alpha_t.detach().clone().requires_grad_(True)
    y_ref = loop_reference(filled, a_ref, 2, 2, 0, False)
    gx_ref, ga_ref = torch.autograd.grad(y_ref, (filled, a_ref), grad)
    torch.testing.assert_close(y[..., ~blocks], y_ref[..., ~blocks], rtol=1e-12, atol=1e-12)
    ga_convention = convention_alpha_grad(filled.detach(), alpha, 2, 2, 0) * grad
    torch.testing.assert_close(ga[..., ~blocks], ga_convention[..., ~blocks], rtol=1e-10, atol=1e-12)
    if alpha > 0:  # at 0 the exact zeros make the derivative a convention (see convention_alpha_grad)
        torch.testing.assert_close(ga[..., ~blocks], ga_ref[..., ~blocks], rtol=1e-10, atol=1e-12)
    positive = ~zero_in & (x.detach()[0, 0] > 0)  # the exact zeros outside the blocks: 0 (a < 1) or finite
    if alpha == 0.5:
        assert (gx[..., ~zero_in & (x.detach()[0, 0] == 0)] == 0).all()
    else:
        torch.testing.assert_close(gx[..., ~zero_in], gx_ref[..., ~zero_in], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx[..., positive], gx_ref[..., positive], rtol=1e-10, atol=1e-12)


def test_partial_zeros_with_small_alpha_match_the_definition_in_fp32():
    # The default (fp32) backend on ReLU-like exact zeros at alpha = 0.5: the float64 definition's values and
    # gradients, 0 at the zeros (the convention), and 0 ln 0 = 0 in the alpha gradient.
    x64 = relu_pattern((2, 3, 8, 8), seed=7)
    x = x64.float().requires_grad_(True)
    alpha = torch.tensor(0.5, requires_grad=True)
    y = p_pool2d(x, alpha, 2, 2)
    y.sum().backward()
    x_ref = x64.clone().requires_grad_(True)
    a_ref = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y_ref = loop_reference(x_ref, a_ref, 2, 2, 0, False)
    y_ref.sum().backward()
    zeros = x64 == 0
    torch.testing.assert_close(y.double(), y_ref.detach(), rtol=1e-6, atol=1e-7)
    assert (x.grad[zeros] == 0).all()
    torch.testing.assert_close(x.grad.double()[~zeros], x_ref.grad[~zeros], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alpha.grad.double(), a_ref.grad, rtol=1e-5, atol=1e-6)


def fused_backend_available(backend, x, alpha):
    from polypool.pooling import cpu_fused, triton_fused

    if backend == "cpu_fused":
        return cpu_fused.supports(x, alpha)
    if backend == "triton":
        return triton_fused.supports(x, alpha, allow_cpu=True)
    return True


@pytest.mark.parametrize("backend", ["reference", "cpu_fused", "triton"])
@pytest.mark.parametrize("kernel,stride,width", [(2, 2, 9), (3, 2, 10)])
def test_a_negative_in_a_column_that_no_window_reads_changes_nothing(backend, kernel, stride, width):
    # Floor mode reads no window over the last column here. A window's output depends on that window only (the
    # authors' per-map shift made this column change its whole map): a kernel that flags it must still give
    # every window its own P-pooling.
    x = torch.rand(2, 3, 8, width, generator=torch.Generator().manual_seed(8)) + 0.1
    x[1, 2, 3, width - 1] = -0.5
    out_w = Window.make(kernel, stride, 0, False).output_size(8, width)[1]
    assert (out_w - 1) * stride + kernel == width - 1  # the last column lies in no window
    if not fused_backend_available(backend, x, 3.0):
        pytest.skip(f"{backend} does not serve this input here")
    y = p_pool2d(x, 3.0, kernel, stride, backend=backend)
    torch.testing.assert_close(
        y.double(), loop_reference(x.double(), 3.0, kernel, stride, 0, False), rtol=1e-5, atol=1e-6
    )


def test_uncovered_negative_sees_trailing_rows_and_columns_only():
    from polypool.pooling.fused_interface import uncovered_negative

    window = Window.make(2, 2, 0, False)
    x = torch.rand(1, 1, 5, 7)
    assert not uncovered_negative(x, window)
    for (row, col), expected in {(4, 0): True, (0, 6): True, (4, 6): True, (3, 5): False}.items():
        bad = x.clone()
        bad[0, 0, row, col] = -1.0
        assert uncovered_negative(bad, window) == expected, (row, col)
    ceil = Window.make(2, 2, 0, True)  # every element is read in ceil mode
    bad = x.clone()
    bad[0, 0, 4, 6] = -1.0
    assert not uncovered_negative(bad, ceil)


def test_channels_last_and_non_contiguous_inputs():
    base = torch.rand(2, 8, 12, 15)
    alpha = torch.rand(8, 1, 1) * 5
    for x in (
        base.contiguous(memory_format=torch.channels_last),
        base.transpose(2, 3).contiguous().transpose(2, 3),
        torch.rand(2, 8, 24, 15)[:, :, ::2],
    ):
        ref_in = x.contiguous().requires_grad_(True)
        x = x.detach().requires_grad_(True)
        y = p_pool2d(x, alpha, 3, 2, 1, True)
        y_ref = p_pool2d(ref_in, alpha, 3, 2, 1, True)
        torch.testing.assert_close(y, y_ref)
        grad = torch.randn_like(y_ref)
        y.backward(grad)
        y_ref.backward(grad)
        torch.testing.assert_close(x.grad, ref_in.grad)


def test_three_dimensional_input():
    x = torch.rand(4, 9, 9)
    torch.testing.assert_close(p_pool2d(x, 2.0, 3, 2), p_pool2d(x[None], 2.0, 3, 2)[0])


def test_autocast_bf16_input():
    torch.manual_seed(0)  # unseeded inputs made an element's bf16 rounding land 2 ulps off about once in 10 runs
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.relu(conv(x))
        assert h.dtype == torch.bfloat16
        h.retain_grad()
        y = p_pool2d(h, 30.0, 2, 2)
    assert y.dtype == torch.bfloat16
    grad = torch.rand(y.shape, generator=torch.Generator().manual_seed(9)) + 0.5
    y.float().backward(grad)
    # Expected: the float64 op on the very bf16 values that reached it, rounded once to bf16 (the op computes in
    # fp32 whatever autocast says); its gradient to h the same, and the conv's gradient is then conv's backward.
    h64 = h.detach().double().requires_grad_(True)
    y64 = p_pool2d(h64, 30.0, 2, 2)
    (gh64,) = torch.autograd.grad(y64, h64, grad.double())
    torch.testing.assert_close(y.double(), y64.detach(), rtol=2**-8, atol=1e-6)
    # two bf16 ulps: the gradient is rounded to bf16 once, and near-tied window elements at alpha = 30 amplify the
    # inputs' own bf16 rounding
    torch.testing.assert_close(h.grad.double(), gh64, rtol=2**-7, atol=2**-7 * gh64.abs().max().item())
    (gw,) = torch.autograd.grad(
        F.conv2d(x, conv.weight, conv.bias, padding=1), conv.weight, h.grad.float() * (h.detach() > 0)
    )
    torch.testing.assert_close(conv.weight.grad, gw, rtol=2e-2, atol=2e-2 * gw.abs().max().item())


@pytest.mark.slow
def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    x = (torch.rand(2, 4, 11, 13) + 0.01).requires_grad_(True)
    alpha = (torch.rand(4, 1, 1) * 10).requires_grad_(True)
    compiled = torch.compile(lambda x, a: p_pool2d(x, a, 3, 2, 1, True), fullgraph=False)
    y = compiled(x, alpha)
    gx, ga = torch.autograd.grad(y.sum(), (x, alpha))
    y_eager = p_pool2d(x, alpha, 3, 2, 1, True)
    gx_eager, ga_eager = torch.autograd.grad(y_eager.sum(), (x, alpha))
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(gx, gx_eager)
    torch.testing.assert_close(ga, ga_eager)


def test_nan_input_propagates_or_raises_with_check():
    x = torch.rand(1, 2, 4, 4)
    x[0, 1, 0, 0] = float("nan")
    y = p_pool2d(x, 2.0, 2, 2)
    assert torch.isnan(y[0, 1, 0, 0]) and torch.isfinite(y[0, 0]).all()
    with pytest.raises(ValueError, match="NaN or Inf"):
        p_pool2d(x, 2.0, 2, 2, check=True)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(alpha=-1.0), ValueError, "alpha must be >= 0"),
        (dict(alpha=float("nan")), ValueError, "alpha must be >= 0"),
        (dict(alpha=torch.ones(5, 1, 1)), ValueError, "does not broadcast"),
        (dict(padding=2), ValueError, "padding must be between 0 and half"),
        (dict(kernel_size=9), ValueError, "too small"),
        (dict(kernel_size=(2, 2, 2)), ValueError, "kernel_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    args = dict(alpha=1.0, kernel_size=2, padding=0) | kwargs
    with pytest.raises(error, match=match):
        p_pool2d(torch.rand(1, 3, 6, 6), args.pop("alpha"), **args)


def test_negative_alpha_tensor_raises_with_check():
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        p_pool2d(torch.rand(1, 3, 6, 6), torch.tensor(-1.0), 2, check=True)


def test_integer_input_raises():
    with pytest.raises(TypeError, match="floating-point"):
        p_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 1.0, 2)


@pytest.mark.parametrize("backend,kept", [("reference", 2), ("auto", 1)])
def test_saves_only_the_window_max_and_denominator_for_backward(backend, kept):
    """The reference keeps the window max and the denominator; the C++ kernel only the denominator (its backward
    recomputes the window max from the window it reads anyway)."""
    x = torch.rand(2, 8, 16, 16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = p_pool2d(x, 30.0, 2, 2, backend=backend)
    extra = [t for t in saved if t.data_ptr() not in (x.data_ptr(), y.data_ptr())]
    out_sized = [t for t in extra if t.shape == y.shape]
    assert len(out_sized) == (kept if backend == "reference" or cpu_fused.supports(x, 30.0) else 2)
    assert all(t.numel() <= 2 * 8 for t in extra if t.shape != y.shape)  # at most one alpha per plane
