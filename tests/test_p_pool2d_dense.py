"""The dense-alpha side branch fused into the P-pooling kernels (C++ on CPU, Triton; issue 17) against the unfused
branch (``dense_branch_alpha`` then the reference op): forward, alpha, and every gradient (x through the pooling
only, the conv taps, the PReLU slope, the 1x1 weight and bias), over the grid of kernel/stride/padding/ceil, with
zeros, all-zero windows and maps, both sides of the clamp, negatives (the unfused path answers), fp16/bf16 (Triton),
channels_last, count_include_pad=False and the gradient scale. The Triton kernels run on CUDA, or in Triton's CPU
interpreter without a GPU."""

import itertools

import pytest
import torch

from polypool.pooling import PPool2d, cpu_fused, dense_p_pool2d, p_pool2d, triton_fused
from polypool.pooling.dense_alpha import DensePPool2dCPU, dense_branch_alpha
from polypool.pooling.fused_interface import NegativeInput, runs_through
from polypool.pooling.geometry import Window

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRID = list(itertools.product([2, 3], [1, 2, 3], [0, 1], [False, True]))
LO, HI = 1.0, 20.0
FUSED = {"cpu_fused": "DensePPool2dCPU", "triton": "DensePPool2dTriton"}


def backend_params(backend):
    marks = []
    if backend == "triton":
        marks.append(pytest.mark.skipif(not triton_fused.enabled(), reason="POLYPOOL_TRITON=0"))
    else:
        marks.append(pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0"))
    return pytest.param(backend, marks=marks)


BACKENDS = [backend_params("cpu_fused"), backend_params("triton")]


def branch_parameters(channels: int, kernel, seed: int = 0):
    """Parameters that put alpha on both sides of the clamp [LO, HI] and inside it, with PReLU's negative side used:
    conv taps of both signs, slopes in (0, 1), 1x1 weights of both signs and biases across the range."""
    generator = torch.Generator().manual_seed(seed)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    conv = torch.randn(channels, 1, kh, kw, generator=generator)
    slope = torch.rand(channels, generator=generator)
    weight = torch.randn(channels, 1, 1, 1, generator=generator) * 40
    bias = 5 + torch.rand(channels, generator=generator) * 10
    return [conv, slope, weight, bias]


def make_input(shape=(2, 5, 11, 13), seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator) * 3
    x[x < 0.6] = 0  # ReLU zeros
    x[0, 0] = 0  # an all-zero map (every window all zero)
    x[1, 1, :4, :4] = 0  # all-zero windows in a map with a non-zero max
    return x


def run(x, params, window: Window, backend: str, fused: bool, include_pad=True, grad_scale=1.0, grad=None):
    """(y, alpha, dx, dconv, dslope, dweight, dbias) of dense_p_pool2d, and y's autograd graph."""
    x = x.detach().clone().requires_grad_(True)
    params = [p.detach().clone().to(x.device).requires_grad_(True) for p in params]
    y, alpha = dense_p_pool2d(
        x,
        *params,
        window.kernel,
        window.stride,
        window.padding,
        window.ceil_mode,
        alpha_range=(LO, HI),
        count_include_pad=include_pad,
        alpha_grad_scale=grad_scale,
        backend=backend,
        fused=fused,
    )
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)) if grad is None else grad
    y.backward(grad.to(y.device, y.dtype))
    return y, [y.detach(), alpha, x.grad, *(p.grad for p in params)]


def compare(x, params, window, backend, rtol=1e-5, include_pad=True, grad_scale=1.0, device=DEVICE):
    y, got = run(x.to(device), params, window, backend, True, include_pad, grad_scale)
    assert runs_through(y, FUSED[backend]), "not the fused path"
    assert y.dtype == x.dtype
    _, want = run(x.float(), params, window, "reference", False, include_pad, grad_scale)
    names = ["y", "alpha", "dx", "dconv", "dslope", "dweight", "dbias"]
    for name, g, w in zip(names, got, want):
        g = g.float().cpu()
        scale = w.abs().max().item()
        if name == "y":
            torch.testing.assert_close(g, w, rtol=rtol, atol=1e-6, msg=name)
        elif name == "alpha":  # computed in fp32 from the same values
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=name)
        elif name == "dx":  # the conditioning of (a+1) - a q/r: about alpha * eps
            torch.testing.assert_close(g, w, rtol=rtol, atol=1e-5 + 2 * HI * 1.2e-7 * 4 + rtol * scale, msg=name)
        else:  # sums over every output of terms that cancel: on the scale of the largest
            torch.testing.assert_close(g, w, rtol=max(rtol, 1e-4), atol=max(rtol, 1e-4) * scale + 1e-6, msg=name)
    return got


# Triton's interpreter is slow: a third of the grid (every case with its own (kernel, stride)) in the default pass,
# the rest in CI's slow pass
GRID_CASES = [
    pytest.param(
        backend.values[0],
        *case,
        marks=[*backend.marks, *([pytest.mark.slow] if backend.values[0] == "triton" and i % 3 else [])],
    )
    for backend in BACKENDS
    for i, case in enumerate(GRID)
]


@pytest.mark.parametrize("backend,kernel,stride,padding,ceil_mode", GRID_CASES)
def test_grid(backend, kernel, stride, padding, ceil_mode):
    window = Window.make(kernel, stride, padding, ceil_mode)
    x = make_input()
    params = branch_parameters(x.shape[1], kernel)
    alpha = compare(x, params, window, backend)[1]
    # the test covers both sides of the clamp and its inside (the clamp's gradient mask is exercised)
    assert ((alpha == LO) | (alpha == HI)).any() and ((alpha > LO) & (alpha < HI)).any()


@pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0")
@pytest.mark.parametrize(
    "kernel,padding,size",
    [(3, 1, (9, 17)), ((3, 5), (1, 2), (6, 19)), ((5, 3), (2, 0), (10, 13)), (2, 0, (7, 5)), (3, 1, (4, 1))],
)
def test_fused_cpu_stride_one_takes_a_plane_as_one_row(kernel, padding, size):
    """At stride 1 the C++ kernel computes a plane's outputs as one row over the padded plane (its rows Wpad apart)
    where that fills the vectors better than a row of outputs at a time (each of these sizes, with AVX2 floats): the
    kw - 1 windows at the end of each row then wrap into the next row, are computed and must be neither stored nor
    let into any gradient. Rectangular windows and maps (width 1 too: two of every three windows wrap), several planes
    per thread, all-zero windows and maps: against the unfused branch."""
    window = Window.make(kernel, 1, padding)
    x = make_input((2, 5, *size), seed=8)
    got = compare(x, branch_parameters(x.shape[1], window.kernel, seed=9), window, "cpu_fused")
    assert (got[2] != 0).any() and (got[3] != 0).any()  # gradients reach x and the conv taps


@pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0")
@pytest.mark.parametrize("window", [(3, 1, 1), (3, 2, 1), (2, 2, 0)])
def test_fused_cpu_keeps_den_alone_and_computes_the_normaliser_again(window):
    """Besides x, y and (views of) the branch's parameters, the C++ path saves den alone for its backward (issue 17's
    target: at most 1x the input, which den is at stride 1); the per-plane normaliser f = input_scale / (max x + 1) is
    computed again in the backward, with the forward's input_scale (2.5 here): every gradient against the unfused
    branch with the same scale."""
    window = Window.make(*window)
    x = make_input(seed=10)
    params = branch_parameters(x.shape[1], window.kernel, seed=11)
    grad = None
    results = []
    for fused, backend in ((True, "cpu_fused"), (False, "reference")):
        xs = x.clone().requires_grad_(True)
        ps = [p.clone().requires_grad_(True) for p in params]
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y, _ = dense_p_pool2d(
                xs,
                *ps,
                window.kernel,
                window.stride,
                window.padding,
                alpha_range=(LO, HI),
                input_scale=2.5,
                backend=backend,
                fused=fused,
            )
        if fused:
            assert runs_through(y, "DensePPool2dCPU")
            own = {t.data_ptr() for t in (xs, y, *ps)}
            assert [t.shape for t in saved if t.data_ptr() not in own] == [y.shape]  # den
        grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(12)) if grad is None else grad
        results.append(torch.autograd.grad(y, (xs, *ps), grad))
    for name, got, want in zip(("x", "conv", "slope", "weight", "bias"), *results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item() + 1e-6, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [(2, 2, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 0)), (3, 1, 1)])
def test_count_include_pad_false_and_gradient_scale(backend, window):
    # (3x3/1 on 11x13 maps: the C++ forward takes rows of outputs, its backward the plane as one row)
    window = Window.make(*window, ceil_mode=True)
    x = make_input(seed=2)
    compare(x, branch_parameters(x.shape[1], window.kernel, seed=3), window, backend, include_pad=False, grad_scale=3.0)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("window", [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
@pytest.mark.skipif(not triton_fused.enabled(), reason="POLYPOOL_TRITON=0")
def test_triton_low_precision(dtype, rtol, window):
    window = Window.make(*window)
    x = make_input(seed=4).to(dtype)
    compare(x, branch_parameters(x.shape[1], window.kernel, seed=5), window, "triton", rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_stays_channels_last(backend):
    window = Window.make(3, 2, 1)
    x = make_input(seed=6).contiguous(memory_format=torch.channels_last)
    y, got = run(x.to(DEVICE), branch_parameters(5, 3), window, backend, True)
    assert runs_through(y, FUSED[backend])
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert got[2].is_contiguous(memory_format=torch.channels_last)
    compare(x, branch_parameters(5, 3), window, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("row", [3, 12])  # row 12 of 13 lies in no window of a floor-mode 2x2/2 pooling
def test_negative_input_takes_the_unfused_path(backend, row):
    """The fused kernels assume x >= 0 (the common case after a ReLU): a negative anywhere in a map, also where
    no window reads it (it changes the branch's normaliser max |x|), sends the call to the unfused path."""
    window = Window.make(2, 2, 0)
    x = make_input((2, 5, 13, 12), seed=7)
    x[1, 2, row, 5] = -4.0  # larger than the map's max: the normaliser is |-4| + 1
    params = branch_parameters(5, 2)
    y, got = run(x.to(DEVICE), params, window, backend, True)
    assert not runs_through(y, FUSED[backend])
    _, want = run(x, params, window, "reference", False)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float().cpu(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0")
def test_cpu_kernel_flags_negatives():
    x = make_input()
    params = branch_parameters(5, 2)
    window = Window.make(2, 2, 0)
    DensePPool2dCPU.apply(x, *params, window, (LO, HI), 1.0, 1.0, True, False)  # no NegativeInput
    x[1, 4, 10, 12] = -1e-3  # row 10 and column 12 lie in no 2x2/2 window of an 11x13 map
    with pytest.raises(NegativeInput):
        DensePPool2dCPU.apply(x, *params, window, (LO, HI), 1.0, 1.0, True, False)


@pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0")
def test_fused_cpu_gradcheck():
    """Finite differences of the fused op as it runs (in fp32, with a step and tolerance to match; the float64 build
    of the same kernel gets the close check below). Inputs away from zero and parameters
    whose alpha stays inside the clamp, so that no finite-difference step crosses a kink. Only the parameters: the
    branch reads x detached (the authors' choice), so dy/dx is by design not the derivative that finite differences
    of x see; the x gradient is checked against the reference's in the tests above."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 6, 7, generator=generator) + 0.5
    conv = (torch.rand(2, 1, 3, 3, generator=generator) + 0.5).requires_grad_(True)
    slope = torch.tensor([0.25, 0.5], requires_grad=True)
    weight = torch.tensor([2.0, -1.5]).view(2, 1, 1, 1).requires_grad_(True)
    bias = torch.tensor([4.0, 9.0], requires_grad=True)

    def fn(x, conv, slope, weight, bias):
        y, _ = dense_p_pool2d(x, conv, slope, weight, bias, 3, 2, 1, alpha_range=(0.0, 100.0))
        assert runs_through(y, "DensePPool2dCPU")
        return y

    with pytest.warns(UserWarning, match="not a double precision"):
        assert torch.autograd.gradcheck(fn, (x, conv, slope, weight, bias), eps=1e-2, atol=2e-3, rtol=2e-2)


@pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0")
@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode,include_pad,width",
    [
        (2, 2, 0, False, True, 8),
        (3, 2, 1, True, True, 8),
        (3, 1, 1, False, True, 8),
        (2, 2, 1, False, True, 8),
        (3, 2, 1, False, False, 8),
        (3, 1, 1, False, True, 13),
    ],
)  # a plane's outputs as one row (float64 AVX2: rows of 13 outputs in 16 lanes)
def test_fused_cpu_kernel_in_float64(kernel, stride, padding, ceil_mode, include_pad, width):
    """The fused kernel's formulas, compiled in float64 from the same source: gradcheck of the four branch
    parameters, and alpha, y and dy/dx (through the pooling only) equal to the unfused branch and the reference op
    in float64 to 1e-10 (in fp32, neither check can be this close). Parameters keep alpha inside the clamp, so no
    finite-difference step crosses a kink."""
    assert cpu_fused.load_extension(torch.float64) is not None, cpu_fused.load_error(torch.float64)
    generator = torch.Generator().manual_seed(kernel * 100 + stride * 10 + padding)
    window = Window.make(kernel, stride, padding, ceil_mode)
    x = (torch.rand(2, 2, 7, width, generator=generator, dtype=torch.float64) + 0.5).requires_grad_(True)
    taps = torch.rand(2, 1, kernel, kernel, generator=generator) - 0.5
    taps -= taps.mean(dim=(2, 3), keepdim=True)  # taps summing to 0: conv sums of both signs, both sides of PReLU
    params = [
        p.double().requires_grad_(True)
        for p in (taps, torch.tensor([0.25, 0.5]), torch.tensor([2.0, -1.5]).view(2, 1, 1, 1), torch.tensor([4.0, 9.0]))
    ]
    alpha_range = (0.0, 100.0)  # alpha stays in (3, 10)

    def fused(x, *params):
        return DensePPool2dCPU.apply(x, *params, window, alpha_range, 1.0, 1.0, include_pad, True)

    assert torch.autograd.gradcheck(lambda *params: fused(x.detach(), *params)[0], tuple(params))
    y, alpha, _ = fused(x, *params)
    alpha_ref = dense_branch_alpha(x, *params, window, alpha_range)  # reads x detached
    assert alpha.min() > alpha_range[0] and alpha.max() < alpha_range[1]
    y_ref = p_pool2d(
        x, alpha_ref, kernel, stride, padding, ceil_mode, backend="reference", count_include_pad=include_pad
    )
    grad_y = torch.rand(y.shape, generator=generator, dtype=torch.float64)
    grads = torch.autograd.grad(y, (x, *params), grad_y)
    grads_ref = torch.autograd.grad(y_ref, (x, *params), grad_y)
    torch.testing.assert_close(alpha, alpha_ref.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for name, grad, grad_ref in zip(("x", "conv", "slope", "weight", "bias"), grads, grads_ref):
        torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12, msg=lambda m: f"d/d{name}: {m}")
    assert (grads[2] != 0).all(), "every channel's conv sums should reach the PReLU's negative side"


@pytest.mark.skipif(not cpu_fused.enabled(), reason="POLYPOOL_CPU_KERNEL=0")
def test_fused_cpu_branch_ignores_a_column_that_no_window_reads():
    """3x3/2 windows of an 8-wide map read columns 0-6. The kernel's vectors of outputs also load past the last
    output (their tail lanes, never stored): an inf in column 7 must not reach the branch's gradients (0 * inf)."""
    x = torch.rand(2, 3, 9, 8) + 0.1
    x[..., 7] = float("inf")
    params = branch_parameters(3, 3)
    fused = [p.clone().requires_grad_(True) for p in params]
    unfused = [p.clone().requires_grad_(True) for p in params]
    y, _ = dense_p_pool2d(x, *fused, 3, 2, 0, alpha_range=(LO, HI))
    assert runs_through(y, "DensePPool2dCPU")
    y_ref, _ = dense_p_pool2d(x, *unfused, 3, 2, 0, alpha_range=(LO, HI), backend="reference")
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(y.sum(), fused)
    grads_ref = torch.autograd.grad(y_ref.sum(), unfused)
    for grad, grad_ref in zip(grads, grads_ref):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-5)


def test_unfused_gradcheck_float64():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 6, 7, generator=generator, dtype=torch.float64) + 0.5
    params = [
        p.double().requires_grad_(True)
        for p in (
            torch.rand(2, 1, 3, 3, generator=generator) + 0.5,
            torch.tensor([0.25, 0.5]),
            torch.tensor([2.0, -1.5]).view(2, 1, 1, 1),
            torch.tensor([4.0, 9.0]),
        )
    ]

    def fn(x, *params):
        return dense_p_pool2d(x, *params, 3, 2, 1, alpha_range=(0.0, 100.0))[0]

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_ppool2d_dense_uses_the_fused_branch_by_default():
    layer = PPool2d(3, 2, 1, channels=5, alpha_mode="dense", alpha_init=10.0)
    assert layer.fused_branch
    unfused = PPool2d(3, 2, 1, channels=5, alpha_mode="dense", alpha_init=10.0, fused_branch=False)
    unfused.load_state_dict(layer.state_dict())
    x = make_input(seed=8)
    y = layer(x)
    if cpu_fused.supports(x, None):
        assert runs_through(y, "DensePPool2dCPU")
    assert not runs_through(unfused(x), "DensePPool2dCPU")
    torch.testing.assert_close(y, unfused(x), rtol=1e-5, atol=1e-6)
    stats = layer.alpha_stats()
    alpha = layer.alpha_branch(x)  # the unfused branch: the same map
    assert stats["mean"] == pytest.approx(alpha.mean().item(), rel=1e-5)
    assert stats["min"] == pytest.approx(alpha.min().item(), rel=1e-5)
    torch.testing.assert_close(
        alpha, dense_branch_alpha(x, *layer.alpha_branch.parameters_for_kernel(), layer.window, layer.alpha_range)
    )


def test_shared_prelu_slope_gets_the_summed_gradient():
    """A branch whose PReLU has one slope for every channel (num_parameters=1) gets the gradient summed over them."""
    x = make_input(seed=9)
    params = branch_parameters(5, 2)
    params[1] = torch.tensor([0.3])
    _, got = run(x, params, Window.make(2, 2, 0), "auto", True)
    _, want = run(x, params, Window.make(2, 2, 0), "reference", False)
    assert got[4].shape == (1,)
    torch.testing.assert_close(got[4], want[4], rtol=1e-4, atol=1e-4 * want[4].abs().max().item())


class FailingKernels:
    """Stands in for the Triton kernels module: ``name`` raises instead of launching (a compile or launch failure)."""

    def __init__(self, name):
        self.module, self.name = triton_fused.kernels.__wrapped__(), name

    def __getattr__(self, attribute):
        kernel = getattr(self.module, attribute)
        if attribute != self.name:
            return kernel

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    raise RuntimeError(f"simulated failure of {attribute}")

                return launch

        return Launcher()


@pytest.fixture
def triton_by_default(monkeypatch):
    """The default backend takes the Triton path (on CPU tensors through the interpreter); no failure recorded."""
    original = triton_fused.supports
    monkeypatch.setattr(triton_fused, "supports", lambda x, alpha, allow_cpu=False: original(x, alpha, True))
    triton_fused.reset()
    yield
    triton_fused.reset()


@pytest.mark.skipif(not triton_fused.enabled(), reason="POLYPOOL_TRITON=0")
@pytest.mark.parametrize("broken", ["p_pool2d_dense_forward_kernel", "p_pool2d_grad_factors_kernel"])
def test_a_failed_triton_launch_warns_and_the_unfused_path_answers(monkeypatch, triton_by_default, broken):
    window = Window.make(3, 2, 1)
    x = make_input(seed=10)
    params = branch_parameters(5, 3)
    _, want = run(x, params, window, "reference", False)
    run(x, params, window, "auto", True)  # the first-result check passes with the real kernels
    failing = FailingKernels(broken)
    monkeypatch.setattr(triton_fused, "kernels", lambda: failing)
    with pytest.warns(RuntimeWarning, match=f"simulated failure of {broken}"):
        y, got = run(x, params, window, "auto", True)
    assert runs_through(y, "DensePPool2dTriton") == (broken != "p_pool2d_dense_forward_kernel")
    assert triton_fused.failure() is not None
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item() + 1e-6)
    with pytest.raises(RuntimeError, match="simulated failure"):  # an explicit backend="triton" raises instead
        triton_fused.reset()
        run(x, params, window, "triton", True)
