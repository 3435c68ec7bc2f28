"""The P-pooling op against its definition, the paper's propositions, and torch's poolings."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from polypool.pooling import p_pool2d
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
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].flatten(2)
            a = alpha[:, :, i, j, None]
            cols.append((patch ** (a + 1)).sum(-1) / (patch ** a).sum(-1))
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def distinct_positive(shape, gap=0.05, seed=None):
    """Positive values with no ties and a gap between them, so the arg-max of every window is unique."""
    n = torch.Size(shape).numel()
    return (1.0 + gap * torch.randperm(n).to(torch.float64)).reshape(shape)


def test_authors_test_vector():
    # facts.md: the test vector from the authors' repositories, verified against the exact formula.
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    alpha = torch.full((1, 1, 3, 3), 2.0, dtype=torch.float64, requires_grad=True)
    y = p_pool2d(x, alpha, 2, 1, 1)
    y.sum().backward()
    torch.testing.assert_close(y.detach(), torch.tensor(
        [[[[1, 1.8, 2], [2.8, 3.3333, 3.6], [3, 3.64, 4]]]], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(alpha.grad, torch.tensor(
        [[[[0, 0.11090, 0], [0.19775, 0.25982, 0.22181], [0, 0.06628, 0]]]], dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.grad, torch.tensor(
        [[[[0.4978, 1.7956], [2.4597, 3.4263]]]], dtype=torch.float64), atol=1e-4, rtol=0)


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
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False),
                                                             (2, 3, 1, True)])
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
def test_extreme_alphas_stay_finite_and_in_window_range(alpha):
    x = (torch.rand(2, 4, 9, 9) * 1e3).requires_grad_(True)
    alpha_t = torch.full((4, 1, 1), alpha, requires_grad=True)
    y = p_pool2d(x, alpha_t, 3, 2, 1)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all() and torch.isfinite(alpha_t.grad).all()
    # the output is a weighted mean of the window (zeros of the padding included): never above the max
    assert (y <= F.max_pool2d(x, 3, 2, 1) * (1 + 1e-6)).all()


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 30.0])
def test_all_zero_input_gives_zero_and_finite_gradients(alpha):
    x = torch.zeros(2, 3, 6, 7, requires_grad=True)
    alpha_t = torch.tensor(alpha, requires_grad=True)
    y = p_pool2d(x, alpha_t, 3, 2, 1, True)
    assert (y == 0).all()
    y.backward(torch.ones_like(y))
    assert torch.isfinite(x.grad).all() and torch.isfinite(alpha_t.grad).all()
    # the convention: an all-zero window back-propagates like average pooling (count_include_pad)
    x_avg = torch.zeros(2, 3, 6, 7, requires_grad=True)
    F.avg_pool2d(x_avg, 3, 2, 1, True).backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, x_avg.grad)


def test_partial_zeros_with_small_alpha_have_finite_gradients():
    x = torch.rand(2, 3, 8, 8)
    x[x < 0.5] = 0  # ReLU-like exact zeros
    x.requires_grad_(True)
    alpha = torch.tensor(0.5, requires_grad=True)
    y = p_pool2d(x, alpha, 2, 2)
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(alpha.grad)


def test_negative_inputs_are_shifted_per_sample_and_channel():
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64)
    x[1, 2] = x[1, 2].abs() + 0.1  # one map without negatives: not shifted
    x.requires_grad_(True)
    y = p_pool2d(x, 3.0, 3, 2, 1)
    shift = x.detach().amin(dim=(-2, -1), keepdim=True).clamp(max=0)
    y_ref = loop_reference(x - shift, 3.0, 3, 2, 1, False) + shift
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    (gx_ref,) = torch.autograd.grad(y_ref, x, grad)
    torch.testing.assert_close(gx, gx_ref)
    assert y.min() >= x.min() - 1e-12  # still a mean of the window (padding = the map's minimum)


def test_channels_last_and_non_contiguous_inputs():
    base = torch.rand(2, 8, 12, 15)
    alpha = torch.rand(8, 1, 1) * 5
    for x in (base.contiguous(memory_format=torch.channels_last), base.transpose(2, 3).contiguous().transpose(2, 3),
              torch.rand(2, 8, 24, 15)[:, :, ::2]):
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
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.relu(conv(x))
        assert h.dtype == torch.bfloat16
        y = p_pool2d(h, 30.0, 2, 2)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().sum().backward()
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


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


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(alpha=-1.0), ValueError, "alpha must be >= 0"),
    (dict(alpha=float("nan")), ValueError, "alpha must be >= 0"),
    (dict(alpha=torch.ones(5, 1, 1)), ValueError, "does not broadcast"),
    (dict(padding=2), ValueError, "padding must be between 0 and half"),
    (dict(kernel_size=9), ValueError, "too small"),
    (dict(kernel_size=(2, 2, 2)), ValueError, "kernel_size"),
])
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


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_saves_only_the_window_max_and_denominator_for_backward(backend):
    x = torch.rand(2, 8, 16, 16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = p_pool2d(x, 30.0, 2, 2, backend=backend)
    extra = [t for t in saved if t.data_ptr() not in (x.data_ptr(), y.data_ptr())]
    out_sized = [t for t in extra if t.shape == y.shape]
    assert len(out_sized) == 2  # the window max and the denominator
    assert all(t.numel() <= 2 * 8 for t in extra if t.shape != y.shape)  # at most one alpha per plane
