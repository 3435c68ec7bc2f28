"""The fused CPU kernel against the reference op: same values and gradients on fresh random inputs."""

import itertools

import pytest
import torch
from fused_checks import check_negative_flag, compare_to_reference

from polypool.pooling import cpu_fused, p_pool2d
from polypool.pooling.geometry import Window

pytestmark = pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0 turns the fused CPU path off")

GRID = list(itertools.product([2, 3], [1, 2, 3], [0, 1], [False, True]))


@pytest.fixture(scope="module", autouse=True)
def kernel_builds():
    assert cpu_fused.load_extension() is not None, f"the CPU kernel failed to build: {cpu_fused.load_error()}"


def compare(x, alpha, kernel, stride, padding, ceil_mode):
    compare_to_reference(x, alpha, kernel, stride, padding, ceil_mode, backend="cpu_fused", function_name="PPool2dCPU")


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", GRID)
def test_grid_channel_alpha(kernel, stride, padding, ceil_mode):
    x = torch.rand(3, 5, 13, 18)
    x[x < 0.2] = 0  # ReLU zeros
    x[0, 0] = 0  # all-zero windows
    alpha = torch.rand(5, 1, 1) * 20
    alpha[0] = 0.0  # average pooling, 0^0 = 1
    alpha[1] = 1.0  # r^(a-1) at r = 0 is 1
    alpha[2] = 0.5  # the w = 0 convention at r = 0
    compare(x, alpha, kernel, stride, padding, ceil_mode)


@pytest.mark.parametrize("alpha_kind", ["float", "layer", "dense"])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(2, 2, 0, False), (3, 2, 1, True), (3, 1, 1, False)])
def test_alpha_shapes(alpha_kind, kernel, stride, padding, ceil_mode):
    x = torch.rand(2, 4, 21, 17) * 5
    out_h, out_w = Window.make(kernel, stride, padding, ceil_mode).output_size(21, 17)
    alpha = {"float": 30.0, "layer": torch.tensor(7.5), "dense": torch.rand(2, 4, out_h, out_w) * 50}[alpha_kind]
    compare(x, alpha, kernel, stride, padding, ceil_mode)


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 1.0, 50.0, 1e4])
def test_extreme_alphas_and_large_activations(alpha):
    x = torch.rand(2, 3, 16, 16) * 3e4
    compare(x, torch.tensor(alpha), 3, 2, 1, False)


@pytest.mark.parametrize("alpha_kind", ["channel", "dense"])
@pytest.mark.parametrize("size", [(14, 14), (8, 36), (4, 32)])  # output rows of 7, 8 + 8 + 2 and 16: vector tails
def test_vgg_2x2_stride_2_tiles(size, alpha_kind):
    """2x2/2 pools of even-sized maps take the kernel's tiled path (deinterleaved loads, interleaved stores)."""
    x = torch.rand(2, 5, *size)
    x[x < 0.2] = 0
    x[0, 0] = 0
    if alpha_kind == "channel":
        alpha = torch.rand(5, 1, 1) * 20
        alpha[0], alpha[1], alpha[2] = 0.0, 1.0, 0.5
    else:
        alpha = torch.rand(2, 5, size[0] // 2, size[1] // 2) * 50
        alpha[:, 0, 0], alpha[:, 1, 1] = 0.0, 1.0
    compare(x, alpha, 2, 2, 0, False)
    compare(x, alpha, 2, 2, 0, True)  # ceil mode changes nothing on even sizes
    compare(torch.randn(2, 5, *size), alpha, 2, 2, 0, False)  # negatives: flagged, their windows shifted


def test_wide_rows_and_negative_inputs():
    x = torch.randn(1, 2, 9, 70)  # rows longer than one vector, and shifts for the negatives
    compare(x, torch.rand(2, 1, 1) * 10, 2, 2, 0, True)


@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode",
    [
        (5, 1, 2, False),
        (5, 2, 2, True),
        (4, 2, 1, True),
        (2, 1, 1, True),
        (3, 2, 0, True),
        ((3, 2), (2, 1), (1, 0), True),
    ],
)
@pytest.mark.parametrize("width", [3, 4, 8, 9, 16, 17, 26])
def test_strides_one_and_two_read_rows_in_place_at_any_width(kernel, stride, padding, ceil_mode, width):
    """Strides 1 and 2 read each window offset's row in place from a padded (stride 2: even/odd column) copy of the
    plane: odd and even widths, maps narrower than a 5-wide window, rows of several vectors, padding 2, ceil-mode
    overhangs, rectangular windows; zeros and all-zero maps; padding counted or not. Widths of whole vectors (8, 16)
    with padding: stride 1 prepares the splits and powers of the input's own columns only, in whole vectors from
    its first column (runs that started at the padding's first would miss the last input columns)."""
    x = torch.rand(2, 3, 7, width)
    x[x < 0.25] = 0
    x[1, 2] = 0
    alpha = torch.tensor([0.0, 3.0, 25.0]).view(3, 1, 1)
    compare(x, alpha, kernel, stride, padding, ceil_mode)
    x64 = x.double().requires_grad_(True)
    y = p_pool2d(x, alpha, kernel, stride, padding, ceil_mode, count_include_pad=False)
    y_ref = p_pool2d(x64, alpha.double(), kernel, stride, padding, ceil_mode, count_include_pad=False)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (2, 1, 0), (3, 2, 1)])
def test_plane_powers_and_their_fallbacks_match_the_float64_reference(kernel, stride, padding):
    """Layer/channel alpha at stride 1 weighs each window from the plane's powers (x / M)^a, M the plane max; a
    vector of windows whose largest power is under 2^-100 takes the exact path. Planes here: a max 64x the rest
    (powers down to 2^-160 before the offset), a max 1e6x the rest (the exact path), all-zero windows beside
    others, alpha 200 (the exact path almost everywhere), alpha 0 (the exact path), and wide windows at alpha 2
    1e22x below their plane's max (exponents near -146, whose rounding the powers must carry). Against the float64
    reference op: y, dy/dx and dy/dalpha."""
    generator = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.rand(2, 6, 12, 30, generator=generator) + 0.5
    x[:, 0, 0, 0] = 64.0
    x[:, 1, 0, 0] = 1e6
    x[:, 2, 3:9, 4:20] = 0
    x[:, 5] = torch.rand(2, 12, 30, generator=generator) + 0.01  # wide windows at alpha 2, 2^-146 below the max
    x[:, 5, 0, 0] = 1e22
    alpha = torch.tensor([30.0, 30.0, 30.0, 200.0, 0.0, 2.0]).view(6, 1, 1)
    x32, a32 = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    x64, a64 = x.double().requires_grad_(True), alpha.double().requires_grad_(True)
    y = p_pool2d(x32, a32, kernel, stride, padding, backend="cpu_fused")
    y64 = p_pool2d(x64, a64, kernel, stride, padding, backend="reference")
    grad = torch.rand(y64.shape, generator=generator, dtype=torch.float64)
    gx, ga = torch.autograd.grad(y, (x32, a32), grad.float())
    gx64, ga64 = torch.autograd.grad(y64, (x64, a64), grad)
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=0)
    torch.testing.assert_close(gx.double(), gx64, rtol=0, atol=5e-5 * gx64.abs().max().item())
    torch.testing.assert_close(ga.double(), ga64, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0])
def test_plane_powers_keep_the_gradient_of_weights_that_underflow(alpha):
    """An element whose power (x / M)^a 2^100 underflows but whose ratio to its window max is positive: its weight is
    negligible, but its dx is not (a q r^(a-1), about 1 at a = 1), so its windows take the exact path. The plane max
    2^127 puts 2^-110 at 2^-137 there, while the windows' largest powers stay above 2^-100."""
    x = torch.tensor([2.0**127, 0, 0, 2.0**-70, 2.0**-110, 2.0**-70, 0, 0]).view(1, 1, 1, 8)
    x = torch.cat([x, torch.rand(1, 1, 1, 8) + 0.5], dim=1)  # and a plane that takes the powers
    a = torch.tensor(alpha)
    x32 = x.clone().requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    y = p_pool2d(x32, a, (1, 3), 1, backend="cpu_fused")
    y64 = p_pool2d(x64, a.double(), (1, 3), 1, backend="reference")
    (gx,) = torch.autograd.grad(y, x32, torch.ones_like(y))
    (gx64,) = torch.autograd.grad(y64, x64, torch.ones_like(y64))
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=0)
    torch.testing.assert_close(gx.double(), gx64, rtol=1e-5, atol=1e-6)
    if alpha == 1.0:
        assert gx64[0, 0, 0, 4].abs() > 1  # the term at stake: about -2.5


def test_gathered_backward_keeps_its_sums_finite():
    """Layer/channel alpha above 1 at stride 1 sums each element's dx from per-output factors g (a + 1) / (den P(m))
    (the kernel's GatherBackward), up to 2^100 times the gradient: a window max 2^-6 below its plane's at alpha 30
    has P(m) = 2^-80. With gradients of 1e13 one factor is ~4e37 and nine overflow; such windows scatter their dx
    instead. Where they do not, the zeros' dx (P A = 0 * inf) turns NaN. Channel 1: the same map, gradients of 1."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 9, 12, generator=generator) + 0.5
    x[:, :, 0, 0] = 64.0
    x[:, :, 4, 3:6] = 0
    alpha = torch.full((2, 1, 1), 30.0)
    grad = torch.ones(1, 2, 9, 12)
    grad[:, 0] = 1e13
    x32 = x.clone().requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    y = p_pool2d(x32, alpha, 3, 1, 1, backend="cpu_fused")
    y64 = p_pool2d(x64, alpha.double(), 3, 1, 1, backend="reference")
    (gx,) = torch.autograd.grad(y, x32, grad)
    (gx64,) = torch.autograd.grad(y64, x64, grad.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-6, atol=0)
    for channel, scale in ((0, 1e13), (1, 1.0)):
        torch.testing.assert_close(gx[:, channel].double(), gx64[:, channel], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "alpha,plane_max",
    [
        (3.0, 2.0**62),
        (5.0, 1e12),
        (7.0, 3.8e8),
        (1.5, 2.0**127),
        (1.1, 2.0**127),
        (2.0, 2.0**127),
        (2.5, 2.0**127),
        (30.0, 64.0),
    ],
)
def test_plane_powers_far_below_the_plane_max(alpha, plane_max):
    """Layer/channel alpha at stride 1 works from the plane's powers P = (x / M)^a 2^100: the forward from row sums
    of P and P x, the backward (a >= 2) by gathering P_i A_i - Q_i B_i with Q_i = P_i / (x_i / M). Windows far below
    the plane max M still take the powers (their largest P above 2^-100), but there sum P x can fall below the
    normal range (y off by 17% at alpha 3 with M = 2^62 in a first version), and x / M can be subnormal while P is
    not (a near 1; M = 2^127: dx off by up to 1.1 at alpha 1.1). Each odd row and column holds a 2^27, so that every
    window has a large max of its own. Against the float64 reference op: y and dx away from M's windows."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 7, 12, generator=generator) + 0.5
    x[0, 0, 1::2, 1::2] = 2.0**27 if plane_max > 2.0**40 else 1.0
    x[0, 0, 0, 0] = plane_max
    x = torch.cat([x, torch.rand(1, 1, 7, 12, generator=generator) + 0.5], dim=1)  # and a plane without
    x[:, 1, 0, 0] = plane_max
    a = torch.tensor(alpha)
    x32 = x.clone().requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    y = p_pool2d(x32, a, 3, 1, 1, backend="cpu_fused")
    y64 = p_pool2d(x64, a.double(), 3, 1, 1, backend="reference")
    grad = torch.rand(y64.shape, generator=generator, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x32, grad.float())
    (gx64,) = torch.autograd.grad(y64, x64, grad)
    far = torch.ones(7, 12, dtype=torch.bool)
    far[:3, :3] = False  # the elements in a window with M, where the other elements' weights are tiny
    torch.testing.assert_close(y.double()[..., far], y64[..., far], rtol=1e-5, atol=0)
    torch.testing.assert_close(gx.double()[..., far], gx64[..., far], rtol=1e-4, atol=1e-5)


def test_non_contiguous_and_channels_last_inputs():
    x = torch.rand(2, 6, 12, 14).contiguous(memory_format=torch.channels_last)
    compare(x, torch.rand(6, 1, 1) * 10, 3, 2, 1, False)
    compare(torch.rand(2, 6, 24, 14)[:, :, ::2], torch.tensor(3.0), 2, 2, 0, False)


def test_auto_backend_uses_the_kernel_for_fp32_and_the_reference_otherwise():
    x = torch.rand(1, 2, 8, 8, requires_grad=True)
    assert "PPool2dCPU" in type(p_pool2d(x, 2.0, 2).grad_fn).__name__
    assert type(p_pool2d(x.double(), 2.0, 2).grad_fn).__name__ == "PPool2dReferenceBackward"
    with pytest.raises(ValueError, match="backend must be one of"):
        p_pool2d(x, 2.0, 2, backend="cuda")
    with pytest.raises(ValueError, match="fp32 CPU"):
        p_pool2d(x.double(), 2.0, 2, backend="cpu_fused")


def test_negative_inputs_are_flagged_by_the_kernel():
    check_negative_flag(cpu_fused.PPool2dCPU, "cpu_fused")


def test_subnormal_input_gradients_are_flushed_to_zero():
    """Tiny window weights r^a times a small upstream gradient give subnormal dx, which slows the next layer's
    convolution backward several-fold on x86; the kernel writes 0 there, the reference keeps them."""
    x = torch.tensor([[1.0, 0.1], [0.5, 0.2]]).repeat(1, 4, 8, 8)  # (1, 4, 16, 16): 2x2 tiles, the tiled path
    grad = torch.full((1, 4, 8, 8), 1e-6)
    alpha = torch.tensor(36.0)  # dx of the 0.1s: 1e-6 * (37 - 360) * 0.1^36 = -3e-40, subnormal
    tiny = torch.finfo(torch.float32).tiny

    def input_grad(backend, size):
        leaf = x[..., :size, :size].clone().requires_grad_(True)
        p_pool2d(leaf, alpha, 2, backend=backend).backward(grad[..., : size // 2, : size // 2])
        return leaf.grad

    for size in (16, 15):  # the tiled path, and the general one (odd size)
        reference, fused = input_grad("reference", size), input_grad("cpu_fused", size)
        subnormal = (reference != 0) & (reference.abs() < tiny)
        assert subnormal.any()  # the case is exercised
        assert not ((fused != 0) & (fused.abs() < tiny)).any()
        assert (fused[subnormal] == 0).all()
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=tiny)


def test_channels_last_input_gives_channels_last_y_and_dx():
    """As max_pool2d does: an NHWC network keeps its layout through the pooling."""
    x = torch.rand(2, 6, 12, 14).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.nn.functional.max_pool2d(x, 3, 2, 1).is_contiguous(memory_format=torch.channels_last)
    y = p_pool2d(x, 3.0, 3, 2, 1, backend="cpu_fused")
    assert y.is_contiguous(memory_format=torch.channels_last)
    y.backward(torch.rand_like(y))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_no_backward_state_without_gradients(monkeypatch):
    """Under no_grad (or when nothing requires a gradient) the kernel writes y only, not den."""
    ext = cpu_fused.load_extension()
    calls = []

    class Spy:
        def forward(self, *args):
            out = ext.forward(*args)
            calls.append((args[7], out[1].numel()))  # args[7]: need_state; out[1]: den
            return out

        def backward(self, *args):
            return ext.backward(*args)

    monkeypatch.setattr(cpu_fused, "load_extension", lambda dtype=torch.float32: Spy())
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with torch.no_grad():
        y = p_pool2d(x, 30.0, 2, backend="cpu_fused")
    assert calls[-1] == (False, 0)
    assert p_pool2d(x.detach(), 30.0, 3, 2, 1, backend="cpu_fused").shape == (2, 3, 4, 4)  # the general path
    assert calls[-1] == (False, 0)
    y_grad = p_pool2d(x, 30.0, 2, backend="cpu_fused")
    assert calls[-1] == (True, 2 * 3 * 4 * 4)
    torch.testing.assert_close(y, y_grad)


@pytest.mark.parametrize("magnitude", [1e-30, 1e-3, 1.0, 1e4, 1e30])
@pytest.mark.parametrize("window", [(3, 1, 1), (3, 2, 1)])
def test_overlapping_backward_is_accurate_at_any_magnitude(magnitude, window):
    """The backward of overlapping windows takes log2(x/m) as a difference of per-element (exponent, log2 mantissa)
    splits computed once per plane: accurate to ~1e-7 absolute at any magnitude of x (a plain log x - log m loses
    |log x| * 6e-8, times alpha = 50 in r^alpha). Against the reference op in float64."""
    x = (torch.rand(2, 3, 9, 10) * 0.5 + 0.5) * magnitude
    x[0, 0, :3] = 0  # zeros and zero windows
    alpha = torch.tensor([50.0, 0.5, 1.0]).view(3, 1, 1)
    xa, aa = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    y = p_pool2d(xa, aa, *window, backend="cpu_fused")
    xb, ab = x.double().requires_grad_(True), alpha.double().requires_grad_(True)
    y_ref = p_pool2d(xb, ab, *window, backend="reference")
    grad = torch.rand(y_ref.shape, dtype=torch.float64)
    y.backward(grad.float())
    y_ref.backward(grad)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(xa.grad.double(), xb.grad, rtol=2e-5, atol=2e-5 * xb.grad.abs().max().item())
    torch.testing.assert_close(aa.grad.double(), ab.grad, rtol=1e-4, atol=1e-4 * ab.grad.abs().max().item())


def fused_and_float64(x, alpha, kernel, stride, padding, generator=None, x_reference=None):
    """y, dx and dalpha of the fused kernel on (x, alpha), and of the float64 reference op on (x_reference, default x),
    for the same random gradient: ((y, dx, dalpha), (y_ref, dx_ref, dalpha_ref)), the first three in float64."""
    xa, aa = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    y = p_pool2d(xa, aa, kernel, stride, padding, backend="cpu_fused")
    x_reference = x if x_reference is None else x_reference
    xb, ab = x_reference.double().requires_grad_(True), alpha.double().requires_grad_(True)
    y_ref = p_pool2d(xb, ab, kernel, stride, padding, backend="reference")
    grad = torch.rand(y_ref.shape, dtype=torch.float64, generator=generator)
    y.backward(grad.float())
    y_ref.backward(grad)
    return (y.double(), xa.grad.double(), aa.grad.double()), (y_ref, xb.grad, ab.grad)


@pytest.mark.parametrize("window", [(3, 1, 1), (3, 2, 1), (3, 3, 0), (2, 2, 0)])
def test_window_weights_are_accurate_to_float_rounding(window):
    """The weights r^a of every path, dense alpha in [0.5, 60.5] over ratios in [0.05, 1]: y to 1.5e-6 relative and
    dy/dalpha to 3e-6 of its largest, against the float64 reference (measured: at most 4.3e-7 and 7.4e-7). Overlapping
    windows take 2^(a log2 r) from exp2_upto_127's polynomial; one coefficient off by 1e-4 of itself (an error of
    up to 1.7e-5 in a weight, which mostly cancels in y = sum p x / sum p) puts y off by 5e-6 and dy/dalpha by 2e-5."""
    kernel, stride, padding = window
    generator = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.rand(2, 4, 24, 24, generator=generator) * 0.95 + 0.05
    out = (24 + 2 * padding - kernel) // stride + 1
    alpha = torch.rand(2, 4, out, out, generator=generator) * 60 + 0.5
    (y, _, ga), (y_ref, _, ga_ref) = fused_and_float64(x, alpha, kernel, stride, padding, generator)
    torch.testing.assert_close(y, y_ref, rtol=1.5e-6, atol=0)
    torch.testing.assert_close(ga, ga_ref, rtol=0, atol=3e-6 * ga_ref.abs().max().item())


@pytest.mark.parametrize("window", [(3, 1, 1), (3, 2, 1), (5, 3, 2)])
def test_zeros_padding_and_subnormals_weigh_nothing_in_overlapping_windows(window):
    """Overlapping windows take a zero's weight 0^a from its split, (kZeroSplit, 0): d = log2(x / m) = -max, so
    2^(a d) = 0 for any a > 0, even a = 1e-3 (a split of (-127, 0) would weigh a zero 2^(-0.127 - a e_m)), and 1 at
    a = 0. Padding too (stride 1 never splits its padding; strides of 3 and more copy padded rows of splits out).
    Positive subnormals count as 0: the window rows hold them as 0, so that r = x / m is 0 even where m is tiny (x =
    1e-40, m ~ 1e-6: r ~ 1e-34 would make dx take p / r instead of the a = 1 limit, and give dy/dalpha at a = 0 a
    term r log r of -max). Against the float64 reference on the input with its subnormals as 0."""
    kernel, stride, padding = window
    generator = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.rand(2, 4, 17, 19, generator=generator) * 1e-6  # every window max below 1e-2 of the subnormals' scale
    x[torch.rand(x.shape, generator=generator) < 0.3] = 0
    x[torch.rand(x.shape, generator=generator) < 0.3] = 1e-40  # positive subnormals
    x[1, 3] = 1e-40  # a plane of nothing but subnormals: all-zero windows
    out_h, out_w = ((n + 2 * padding - kernel) // stride + 1 for n in (17, 19))
    values = torch.tensor([0.0, 1.0, 1e-3, 2.5])  # 0^0 = 1; r^(a-1) at r = 0 is 1 for a = 1; a tiny a; and any a
    alpha = values[torch.randint(0, 4, (2, 4, out_h, out_w), generator=generator)]
    flushed = torch.where(x < torch.finfo(torch.float32).tiny, torch.zeros_like(x), x)
    (y, gx, ga), (y_ref, gx_ref, ga_ref) = fused_and_float64(x, alpha, kernel, stride, padding, generator, flushed)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-45)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5 * gx_ref.abs().max().item())
    assert ga.isfinite().all()
    torch.testing.assert_close(ga, ga_ref, rtol=1e-4, atol=1e-4 * ga_ref.abs().max().item())


@pytest.mark.parametrize("window", [(3, 1, 0), (3, 2, 0), (3, 3, 0), (2, 2, 0)])
@pytest.mark.parametrize("alpha_kind", ["layer", "dense"])
@pytest.mark.parametrize("alpha", [1e-45, 1e-38, 1e-3, 0.01, 0.5])
def test_alphas_below_one_weigh_zeros_and_underflowing_ratios_nothing(window, alpha_kind, alpha):
    """Below alpha = 1 the weight 2^(a log2 r) of what counts as 0 need not underflow by itself: a zero's split gives
    log2 r = -max, and a * -max is only -3.4 at a = 1e-38 (a zero would weigh 0.09); a ratio x / m of 1e-40 (a
    normal x = 1e-37 beside m = 1e3: it counts as 0, as subnormals do) weighs 0.4 at a = 0.01. pow_split masks both
    where a vector of windows has an a below 1, and the backward counts the same elements as 0. Against the float64
    reference on the input with that element set to 0: y, dx (0 at the counted-out element) and dy/dalpha."""
    kernel, stride, padding = window
    x = torch.rand(1, 2, 9, 9) + 0.5
    x[:, :, ::2, ::2] = 0  # zeros in every window
    x[0, 1, 1, 1] = 1e3
    x[0, 1, 1, 0] = 1e-37  # its ratio to the 1e3 in each of its windows, 1e-40, is below the smallest normal float
    out = (9 + 2 * padding - kernel) // stride + 1
    a = torch.full((2, 1, 1), alpha) if alpha_kind == "layer" else torch.full((1, 2, out, out), alpha)
    counted = x.clone()
    counted[0, 1, 1, 0] = 0
    (y, gx, ga), (y_ref, gx_ref, ga_ref) = fused_and_float64(x, a, kernel, stride, padding, x_reference=counted)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ga, ga_ref, rtol=1e-4, atol=1e-4 * ga_ref.abs().max().item() + 1e-6)


@pytest.mark.parametrize("window", [(3, 1, 1), (3, 2, 1), (3, 3, 0), (2, 2, 0)])
@pytest.mark.parametrize("alpha_kind", ["layer", "dense"])
@pytest.mark.parametrize("alpha", [1.01, 1.05, 1.1])
def test_alphas_just_above_one_keep_r_to_the_a_minus_one_where_r_to_the_a_underflows(window, alpha_kind, alpha):
    """x = 2e-38 beside elements of about 1: its ratio r ~ 2e-38 is a normal float, but r^a is below the smallest one
    for every a > 1 here, and written as 0. Its dx = g / den ((a + 1) r^a - a q r^(a-1)) keeps the second term:
    r^(a-1) is 0.42 at a = 1.01 and 2e-4 at a = 1.1 (taken as r^a / r, it was 0). Against the float64 reference."""
    kernel, stride, padding = window
    generator = torch.Generator().manual_seed(11)
    x = torch.rand(1, 2, 9, 9, generator=generator) + 0.5
    x[0, 1, 4, 4] = 2e-38
    out = (9 + 2 * padding - kernel) // stride + 1
    a = torch.full((2, 1, 1), alpha) if alpha_kind == "layer" else torch.full((1, 2, out, out), alpha)
    (y, gx, ga), (y_ref, gx_ref, ga_ref) = fused_and_float64(x, a, kernel, stride, padding, generator)
    atol = 1e-6
    assert gx_ref[0, 1, 4, 4].abs() > 2 * atol  # the term the test is about: more than the tolerance
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=atol)
    torch.testing.assert_close(ga, ga_ref, rtol=1e-4, atol=1e-4 * ga_ref.abs().max().item() + 1e-6)


# Windows of every kernel path: the tiled 2x2/2, stride 2 and 1 with padding, a ceil-mode overhang, stride 3, and
# padding left out of the window (count_include_pad=False).
FLOAT64_WINDOWS = [
    (2, 2, 0, False, True),
    (3, 2, 1, True, True),
    (3, 1, 1, False, True),
    (2, 2, 1, False, True),
    (3, 3, 0, True, True),
    (3, 2, 1, False, False),
]


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,include_pad", FLOAT64_WINDOWS)
@pytest.mark.parametrize("alpha_kind", ["channel", "dense"])
def test_float64_build_of_the_kernel_passes_gradcheck_and_matches_the_reference(
    kernel, stride, padding, ceil_mode, include_pad, alpha_kind
):
    """The kernel's own formulas, compiled in float64 from the same source (in float32, finite differences cannot
    check them closely): gradcheck of x and alpha, and the float64 reference op's values and gradients to 1e-10.
    Inputs away from zero, so that no finite-difference step crosses 0^alpha's kink."""
    from polypool.pooling.cpu_fused import PPool2dCPU

    assert cpu_fused.load_extension(torch.float64) is not None, cpu_fused.load_error(torch.float64)
    generator = torch.Generator().manual_seed(kernel * 100 + stride * 10 + padding)
    window = Window.make(kernel, stride, padding, ceil_mode)
    x = (torch.rand(2, 2, 7, 8, generator=generator, dtype=torch.float64) + 0.5).requires_grad_(True)
    out_h, out_w = window.output_size(7, 8)
    alpha = (
        torch.tensor([0.7, 6.0], dtype=torch.float64).view(2, 1, 1)
        if alpha_kind == "channel"
        else torch.rand(2, 2, out_h, out_w, generator=generator, dtype=torch.float64) * 12 + 0.1
    ).requires_grad_(True)

    def fused(x, alpha):
        return PPool2dCPU.apply(x, alpha, window, True, True, include_pad)

    assert torch.autograd.gradcheck(fused, (x, alpha))
    y = fused(x, alpha)
    grad_y = torch.rand(y.shape, generator=generator, dtype=torch.float64)
    gx, ga = torch.autograd.grad(y, (x, alpha), grad_y)
    y_ref = p_pool2d(x, alpha, kernel, stride, padding, ceil_mode, backend="reference", count_include_pad=include_pad)
    gx_ref, ga_ref = torch.autograd.grad(y_ref, (x, alpha), grad_y)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga, ga_ref, rtol=1e-10, atol=1e-12)
