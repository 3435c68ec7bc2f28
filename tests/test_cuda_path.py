"""The dispatch of ``p_pool2d`` to its backends, and the Triton path's safety nets (issue 16).

Without a GPU the Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set in conftest.py).
"""

import pytest
import torch
from fused_checks import runs_through

from polypool.pooling import p_pool2d, triton_fused

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize(
    "backend,function_name",
    [("triton", "PPool2dTriton"), ("reference", "PPool2dReference"), ("cpu_fused", "PPool2dCPU")],
)
def test_3d_input_keeps_the_backend(backend, function_name):
    """A (C, H, W) input runs on the backend asked for (it used to drop ``backend`` and take the default)."""
    if backend == "triton" and not triton_fused.enabled():
        pytest.skip("POLYPOOL_TRITON=0")
    device = DEVICE if backend == "triton" else "cpu"
    x = torch.rand(2, 6, 6, device=device, requires_grad=True)
    y = p_pool2d(x, 3.0, 2, backend=backend)
    assert y.shape == (2, 3, 3)
    assert runs_through(y, function_name)
    torch.testing.assert_close(y, p_pool2d(x[None], 3.0, 2, backend="reference")[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- safety nets

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import types  # noqa: E402
import warnings  # noqa: E402

from polypool.pooling.geometry import Window  # noqa: E402

needs_triton = pytest.mark.skipif(not triton_fused.enabled(), reason="POLYPOOL_TRITON=0 turns the Triton path off")


@pytest.fixture(autouse=True)
def fresh_triton_state():
    """Every test starts (and leaves) without a recorded failure or first-result check."""
    triton_fused.reset()
    yield
    triton_fused.reset()


@pytest.fixture
def auto_uses_triton(monkeypatch):
    """The default backend takes the Triton path here too (on CPU tensors, through the interpreter)."""
    original = triton_fused.supports
    monkeypatch.setattr(triton_fused, "supports", lambda x, alpha, allow_cpu=False: original(x, alpha, True))


# where each kernel takes its element count (``total``) among its positional arguments
TOTAL_ARG = {
    "p_pool2d_forward_kernel": 6,
    "p_pool2d_grad_factors_kernel": 7,
    "p_pool2d_grad_input_kernel": 4,
    "p_pool2d_dense_forward_kernel": 11,
}


class RecordingKernels:
    """Stands in for the kernels module: records every launch (kernel name, grid, total, BLOCK), optionally
    tampers with a kernel's result or raises instead of launching."""

    def __init__(self, tamper=None, fail=None):
        self.module = triton_fused.kernels.__wrapped__()
        self.launches, self.tamper, self.fail = [], tamper or {}, fail or set()

    def __getattr__(self, name):
        kernel = getattr(self.module, name)
        outer = self

        class Launcher:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    if name in outer.fail:
                        raise RuntimeError(f"simulated failure of {name}")
                    outer.launches.append(
                        types.SimpleNamespace(
                            name=name, grid=grid, total=args[TOTAL_ARG[name]], block=kwargs["BLOCK"], kwargs=kwargs
                        )
                    )
                    kernel[grid](*args, **kwargs)
                    if name in outer.tamper:
                        outer.tamper[name](args)

                return launch

        return Launcher()


def reference(x, alpha, *window):
    return p_pool2d(x.detach().float(), alpha, *window, backend="reference")


@needs_triton
def test_a_failed_launch_warns_once_and_falls_back(monkeypatch, auto_uses_triton):
    fake = RecordingKernels(fail={"p_pool2d_forward_kernel"})
    monkeypatch.setattr(triton_fused, "kernels", lambda: fake)
    x = torch.rand(2, 3, 8, 8, device=DEVICE)
    with pytest.warns(RuntimeWarning, match=r"POLYPOOL_TRITON=0.*Cause: RuntimeError: simulated failure"):
        y = p_pool2d(x, 3.0, 2)
    torch.testing.assert_close(y, reference(x, 3.0, 2))
    assert "simulated failure" in triton_fused.failure()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        xg = x.clone().requires_grad_(True)
        y = p_pool2d(xg, 3.0, 2)
        assert not runs_through(y, "PPool2dTriton")
    with pytest.raises(ValueError, match="switched off after a failure: RuntimeError: simulated"):
        p_pool2d(x, 3.0, 2, backend="triton")  # an explicit request says why it cannot be served


@needs_triton
def test_a_failure_on_the_retry_after_negative_inputs_falls_back_with_the_shift(monkeypatch, auto_uses_triton):
    """Negative inputs: the first launch reports them, the retry on the shifted input fails to launch; the answer is
    the reference op's on the shifted input, shifted back."""
    p_pool2d(torch.rand(2, 3, 8, 8, device=DEVICE), 3.0, 2)  # the first-result check, with the real kernels
    fake = RecordingKernels()
    launches = {"forward": 0}
    real_getattr = RecordingKernels.__getattr__

    def second_forward_fails(self, name):
        launcher = real_getattr(self, name)
        if name != "p_pool2d_forward_kernel":
            return launcher

        class FailOnRetry:
            def __getitem__(self, grid):
                def launch(*args, **kwargs):
                    launches["forward"] += 1
                    if launches["forward"] == 2:
                        raise RuntimeError("simulated failure on the retry")
                    return launcher[grid](*args, **kwargs)

                return launch

        return FailOnRetry()

    monkeypatch.setattr(RecordingKernels, "__getattr__", second_forward_fails)
    monkeypatch.setattr(triton_fused, "kernels", lambda: fake)
    x = torch.randn(2, 3, 8, 9, device=DEVICE) - 0.5  # negatives in every map
    with pytest.warns(RuntimeWarning, match=r"POLYPOOL_TRITON=0.*Cause: RuntimeError: simulated failure on the retry"):
        y = p_pool2d(x, 3.0, 2)
    assert launches["forward"] == 2
    torch.testing.assert_close(y, reference(x, 3.0, 2))
    assert (y < 0).any()  # shifted back


@needs_triton
def test_strict_mode_and_explicit_backend_raise(monkeypatch, auto_uses_triton):
    fake = RecordingKernels(fail={"p_pool2d_forward_kernel"})
    monkeypatch.setattr(triton_fused, "kernels", lambda: fake)
    x = torch.rand(2, 3, 8, 8, device=DEVICE)
    with pytest.raises(RuntimeError, match="simulated failure"):
        p_pool2d(x, 3.0, 2, backend="triton")
    monkeypatch.setenv("POLYPOOL_TRITON", "strict")
    with pytest.raises(RuntimeError, match="simulated failure"):
        p_pool2d(x, 3.0, 2)
    assert triton_fused.failure() is None  # nothing was switched off


@needs_triton
@pytest.mark.parametrize("include_pad", [True, False])
def test_a_failed_backward_is_answered_by_the_reference(monkeypatch, auto_uses_triton, include_pad):
    """The reference op answers with the forward's window, count_include_pad included (alpha 0 in channel 0, where
    the padding counts: the answer counted it even with count_include_pad=False)."""
    x = torch.rand(2, 3, 9, 8, device=DEVICE)
    alpha = torch.rand(3, 1, 1, device=DEVICE) * 10
    alpha[0] = 0.0
    p_pool2d(x, alpha, 3, 2, 1, count_include_pad=include_pad)  # the first-result check passes with the real kernels
    fake = RecordingKernels(fail={"p_pool2d_grad_input_kernel"})
    monkeypatch.setattr(triton_fused, "kernels", lambda: fake)
    xg, ag = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    y = p_pool2d(xg, ag, 3, 2, 1, count_include_pad=include_pad)
    assert runs_through(y, "PPool2dTriton")
    with pytest.warns(RuntimeWarning, match="simulated failure of p_pool2d_grad_input_kernel"):
        y.backward(torch.ones_like(y))
    xr, ar = x.clone().requires_grad_(True), alpha.clone().requires_grad_(True)
    p_pool2d(xr, ar, 3, 2, 1, backend="reference", count_include_pad=include_pad).backward(torch.ones_like(y))
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ag.grad, ar.grad, rtol=1e-4, atol=1e-5)


@needs_triton
@pytest.mark.parametrize(
    "broken", ["p_pool2d_forward_kernel", "p_pool2d_grad_input_kernel", "p_pool2d_grad_factors_kernel"]
)
def test_first_result_is_checked_against_the_reference(monkeypatch, auto_uses_triton, broken):
    """A kernel that runs but computes wrong values (a miscompile) is caught on the first call, before any result
    reaches the user: a warning, and the reference op's result."""
    output_arg = {"p_pool2d_forward_kernel": 2, "p_pool2d_grad_input_kernel": 3, "p_pool2d_grad_factors_kernel": 6}
    fake = RecordingKernels(tamper={broken: lambda args: args[output_arg[broken]].mul_(1.5)})
    monkeypatch.setattr(triton_fused, "kernels", lambda: fake)
    x = torch.rand(2, 3, 8, 8, device=DEVICE)
    alpha = torch.rand(3, 1, 1, device=DEVICE) * 10
    with pytest.warns(RuntimeWarning, match="first result.*does not match the reference"):
        y = p_pool2d(x, alpha, 2)
    torch.testing.assert_close(y, reference(x, alpha, 2))
    monkeypatch.setenv("POLYPOOL_TRITON", "strict")
    triton_fused.reset()
    with pytest.raises(RuntimeError, match="does not match the reference"):
        p_pool2d(x, alpha, 2)


@needs_triton
def test_first_result_check_runs_once_per_dtype_and_alpha_layout(monkeypatch, auto_uses_triton):
    calls = []
    original = triton_fused._first_result_mismatch
    monkeypatch.setattr(
        triton_fused, "_first_result_mismatch", lambda *args: calls.append(args[1:3]) or original(*args)
    )
    x = torch.rand(1, 2, 6, 6, device=DEVICE)
    for _ in range(2):
        p_pool2d(x, 3.0, 2)
        p_pool2d(x, torch.rand(2, 1, 1, device=DEVICE), 2)  # per-plane, like a float
        p_pool2d(x, torch.rand(1, 2, 3, 3, device=DEVICE), 2)  # dense
        p_pool2d(x.half(), 3.0, 2)
    assert calls == [(torch.float32, False), (torch.float32, True), (torch.float16, False)]


def dense_branch(channels: int, kernel: int):
    """Parameters of the dense-alpha branch (conv, PReLU slope, 1x1 weight, bias) that use both sides of the clamp."""
    generator = torch.Generator().manual_seed(2)
    return [
        torch.randn(channels, 1, kernel, kernel, generator=generator),
        torch.rand(channels, generator=generator),
        torch.randn(channels, 1, 1, 1, generator=generator) * 20,
        5 + torch.rand(channels, generator=generator) * 10,
    ]


def dense_pool(x, params, backend="auto", fused=True):
    from polypool.pooling import dense_p_pool2d

    return dense_p_pool2d(
        x, *[p.to(x.device) for p in params], 2, alpha_range=(1.0, 20.0), backend=backend, fused=fused
    )


@needs_triton
@pytest.mark.parametrize(
    "broken,output_arg",
    [
        ("p_pool2d_dense_forward_kernel", 7),  # y
        ("p_pool2d_dense_forward_kernel", 6),  # alpha
        ("p_pool2d_grad_factors_kernel", 6),  # the branch's gradient sums
        ("p_pool2d_grad_input_kernel", 3),
    ],
)  # dx
def test_dense_branch_first_result_is_checked_against_the_unfused_branch(
    monkeypatch, auto_uses_triton, broken, output_arg
):
    """The fused dense-alpha kernels get the plain path's first-result check (their own kernels: a miscompile of
    them went unnoticed): a wrong y, alpha or gradient on the first call warns, naming the cause and POLYPOOL_TRITON,
    and the unfused branch answers; strict mode raises."""
    fake = RecordingKernels(tamper={broken: lambda args: args[output_arg].mul_(1.5)})
    monkeypatch.setattr(triton_fused, "kernels", lambda: fake)
    x = torch.rand(2, 3, 8, 8, device=DEVICE)
    params = dense_branch(3, 2)
    with pytest.warns(
        RuntimeWarning,
        match=r"POLYPOOL_TRITON=0.*Cause: RuntimeError: the first result of the Triton "
        r"kernels \(torch.float32, fused dense-alpha branch.*does not match",
    ):
        y, alpha = dense_pool(x, params)
    assert not runs_through(y, "DensePPool2dTriton")
    want_y, want_alpha = dense_pool(x.cpu(), params, backend="reference", fused=False)
    torch.testing.assert_close(y.cpu(), want_y)
    torch.testing.assert_close(alpha.cpu(), want_alpha)
    monkeypatch.setenv("POLYPOOL_TRITON", "strict")
    triton_fused.reset()
    with pytest.raises(RuntimeError, match="fused dense-alpha branch.*does not match the reference"):
        dense_pool(x, params)


@needs_triton
def test_dense_branch_first_result_check_runs_once_per_dtype(monkeypatch, auto_uses_triton):
    calls = []
    original = triton_fused._dense_first_result_mismatch
    monkeypatch.setattr(
        triton_fused, "_dense_first_result_mismatch", lambda *args: calls.append(args[1]) or original(*args)
    )
    x = torch.rand(1, 2, 6, 6, device=DEVICE, requires_grad=True)  # a graph: runs_through can tell the path
    params = dense_branch(2, 2)
    for _ in range(2):
        assert runs_through(dense_pool(x, params)[0], "DensePPool2dTriton")
        assert runs_through(dense_pool(x.half(), params)[0], "DensePPool2dTriton")
    assert calls == [torch.float32, torch.float16]
    assert triton_fused.failure() is None


FALLBACK_SCRIPT = textwrap.dedent("""
    import warnings, torch
    from polypool.pooling import p_pool2d, triton_fused
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":  # route CPU tensors to the real (non-interpreted) Triton launch path: it has no driver here
        original = triton_fused.supports
        triton_fused.supports = lambda x, alpha, allow_cpu=False: (
            triton_fused.failure() is None and triton_fused.enabled() and x.dtype in triton_fused.DTYPES)
    x = torch.rand(2, 4, 8, 8, device=device, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = p_pool2d(x, 3.0, 2)
        y.sum().backward()
        p_pool2d(x, 3.0, 2)
    ok = torch.allclose(y, p_pool2d(x, 3.0, 2, backend="reference"), rtol=1e-5, atol=1e-6)
    messages = [str(w.message) for w in caught if "Triton" in str(w.message)]
    print("WARNINGS", len(messages))
    print("MATCHES", ok, "GRAD", bool(torch.isfinite(x.grad).all()))
    print("MESSAGE", messages[0] if messages else "")
""")


@needs_triton
@pytest.mark.parametrize("strict", [False, True])
def test_no_compiler_and_empty_cache_falls_back_in_a_fresh_process(tmp_path, strict):
    """A bare machine: no working C compiler (CC=/bin/false) and an empty Triton cache, in a fresh process with
    the real launch path (not the interpreter). On a GPU, Triton cannot build its launcher; without one it finds
    no driver. Either way p_pool2d warns once and answers with the reference op; strict mode raises."""
    env = dict(
        os.environ,
        CC="/bin/false",
        TRITON_CACHE_DIR=str(tmp_path / "triton_cache"),
        TRITON_INTERPRET="0",
        POLYPOOL_CPU_KERNEL="0",
        POLYPOOL_TRITON="strict" if strict else "1",
    )
    (tmp_path / "triton_cache").mkdir()
    done = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    if strict:
        assert done.returncode != 0, done.stdout
        assert "Error" in done.stderr.strip().splitlines()[-1]
        return
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WARNINGS 1" in done.stdout and "MATCHES True GRAD True" in done.stdout, done.stdout + done.stderr[-2000:]
    assert "POLYPOOL_TRITON=0" in done.stdout and "Cause: " in done.stdout


# ---------------------------------------------------------------------------------------------- launch layout


def launches_of(monkeypatch, fn):
    fake = RecordingKernels()
    monkeypatch.setattr(triton_fused, "kernels", lambda: fake)
    fn()
    return fake.launches


@needs_triton
@pytest.mark.parametrize(
    "shape,window",
    [
        ((1, 40, 14, 14), (2, 2, 0)),  # VGG16's pool5 at 224: 49 outputs/plane
        ((1, 12, 8, 8), (3, 1, 1)),  # Inception's Mixed_7b pools: 64 per plane
        ((1, 2, 23, 31), (3, 2, 1)),
    ],
)
def test_one_flat_grid_without_idle_blocks(monkeypatch, shape, window):
    """Every launch is a 1-D grid over the whole tensor (CUDA's grid axis 1 stops at 65,535 blocks: a plane with
    more than 65,535 x BLOCK outputs or inputs failed), and only the last block has idle lanes (a 7x7 plane used
    49 of 512 lanes)."""
    triton_fused._checked.add((torch.device(DEVICE), torch.float32, False))  # no first-result check here
    x = torch.rand(shape, device=DEVICE, requires_grad=True)
    alpha = torch.full((shape[1], 1, 1), 5.0, device=DEVICE, requires_grad=True)
    launches = launches_of(monkeypatch, lambda: p_pool2d(x, alpha, *window, backend="triton").sum().backward())
    assert [launch.name for launch in launches] == [
        "p_pool2d_forward_kernel",
        "p_pool2d_grad_factors_kernel",
        "p_pool2d_grad_input_kernel",
    ]
    for launch in launches:
        assert len(launch.grid) == 1 and launch.grid[0] < 2**31, launch
        assert 0 <= launch.grid[0] * launch.block - launch.total < launch.block, launch


@needs_triton
def test_int64_indexing(monkeypatch):
    """Tensors of 2^31 elements or more index in int64; forced here on a small input (any layout)."""
    monkeypatch.setattr(triton_fused, "INT64_FROM", 0)
    launches = launches_of(monkeypatch, lambda: compare_layouts(torch.rand(2, 3, 9, 10), 3, 2, 1))
    assert launches and all(launch.kwargs["IDX64"] for launch in launches)


def compare_layouts(x, *window, alpha=None, dtype=torch.float32, rtol=1e-5):
    """Triton against the reference on x as NCHW, channels_last and a strided view: values, gradients, and the
    memory format of y and dx (channels_last stays channels_last, as with max_pool2d)."""
    _n, c = x.shape[:2]
    alpha = torch.rand(c, 1, 1) * 10 if alpha is None else alpha
    for layout in ("nchw", "channels_last", "strided"):
        xl = x.to(DEVICE, dtype)
        if layout == "channels_last":
            xl = xl.contiguous(memory_format=torch.channels_last)
        elif layout == "strided":
            xl = torch.cat([xl, xl], dim=-1)[..., ::2]
        xl = xl.detach().requires_grad_(True)
        a = alpha.to(DEVICE).clone().requires_grad_(True)
        y = p_pool2d(xl, a, *window, backend="triton")
        g = torch.rand_like(y, memory_format=torch.contiguous_format)
        y.backward(g)
        xr = xl.detach().float().contiguous().requires_grad_(True)
        ar = alpha.clone().to(DEVICE).requires_grad_(True)
        yr = p_pool2d(xr, ar, *window, backend="reference")
        yr.backward(g.float())
        expect_cl = layout == "channels_last"
        assert y.is_contiguous(memory_format=torch.channels_last) == expect_cl or y.is_contiguous(), layout
        if expect_cl:
            assert y.is_contiguous(memory_format=torch.channels_last)
            assert xl.grad.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.float(), yr, rtol=rtol, atol=1e-6)
        torch.testing.assert_close(xl.grad.float(), xr.grad, rtol=rtol, atol=1e-4)
        torch.testing.assert_close(a.grad, ar.grad, rtol=max(rtol, 1e-4), atol=1e-4 * ar.grad.abs().max().item())


@needs_triton
@pytest.mark.parametrize("window", [(2, 2, 0), (3, 2, 1, True), (3, 1, 1)])
def test_channels_last_and_strided_inputs_are_read_in_place(window):
    x = torch.rand(2, 3, 7, 8)
    x[x < 0.2] = 0
    compare_layouts(x, *window)
    n, c = x.shape[:2]
    out = Window.make(*window).output_size(7, 8)
    compare_layouts(x, *window, alpha=torch.rand(n, c, *out) * 30)  # dense alpha, laid out like the output
    if window == (2, 2, 0):
        compare_layouts(x, *window, dtype=torch.bfloat16, rtol=1.6e-2)


@needs_triton
def test_channels_last_input_is_not_copied():
    """x is saved for backward as it is (the old path saved an NCHW copy of every channels_last input)."""
    x = torch.rand(2, 4, 8, 8, device=DEVICE).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = p_pool2d(x, 3.0, 2, backend="triton")
    assert runs_through(y, "PPool2dTriton")
    assert any(t.data_ptr() == x.data_ptr() and t.stride() == x.stride() for t in saved)
    assert y.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------- inference


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_backward_state_without_gradients(monkeypatch, dtype):
    """Under no_grad (or when nothing requires a gradient) the forward writes y only, not den and q."""
    triton_fused._checked.update({(torch.device(DEVICE), dtype, False)})
    sizes = []
    original = triton_fused._alloc
    monkeypatch.setattr(
        triton_fused,
        "_alloc",
        lambda shape, dtype, *a: sizes.append((tuple(shape), dtype)) or original(shape, dtype, *a),
    )
    x = torch.rand(2, 3, 8, 8, device=DEVICE, dtype=dtype)
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():
        y = p_pool2d(xg, 30.0, 2, backend="triton")
    outputs = [s for s in sizes if s[0] == (2, 3, 4, 4)]
    assert outputs == [((2, 3, 4, 4), dtype)]  # y alone
    y2 = p_pool2d(x, 30.0, 2, backend="triton")  # nothing requires a gradient
    assert len([s for s in sizes if s[0] == (2, 3, 4, 4)]) == 2
    torch.testing.assert_close(y, y2)
    sizes.clear()
    p_pool2d(xg, 30.0, 2, backend="triton")
    assert len([s for s in sizes if s[0] == (2, 3, 4, 4)]) == (3 if dtype != torch.float32 else 2)  # y, den (q)


@needs_triton
@pytest.mark.parametrize("dtype,bytes_per_output", [(torch.float32, 4), (torch.bfloat16, 8)])
@pytest.mark.parametrize("fused_branch", [False, True])
def test_saved_for_backward_beyond_x_and_y_is_den_and_q_only(dtype, bytes_per_output, fused_branch):
    """Autograd keeps, beyond x and y, den (fp32) and for fp16/bf16 q (fp32): not the window max, which the backward
    recomputes from the window it reads anyway, nor the fused branch's alpha map, which it recomputes from the same
    read (they made 3x3/1 with the fused branch keep 3x the input's bytes in fp32, 7x in bf16)."""
    x = torch.rand(2, 3, 9, 10, device=DEVICE, dtype=dtype).requires_grad_(True)
    params = [p.to(DEVICE) for p in dense_branch(3, 3)]

    def pool():
        if fused_branch:
            from polypool.pooling import dense_p_pool2d

            y, _ = dense_p_pool2d(x, *params, 3, 1, 1, alpha_range=(1.0, 20.0), backend="triton")
        else:
            y = p_pool2d(x, torch.full((3, 1, 1), 5.0, device=DEVICE, requires_grad=True), 3, 1, 1, backend="triton")
        return y

    pool()  # the first-result check, outside the hook
    saved = {}

    def pack(t):
        saved[t.data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = pool()
    assert runs_through(y, "DensePPool2dTriton" if fused_branch else "PPool2dTriton")
    extra = [t for ptr, t in saved.items() if ptr not in (x.data_ptr(), y.data_ptr())]
    out_sized = [t for t in extra if t.numel() == y.numel()]
    assert sum(t.numel() * t.element_size() for t in out_sized) == bytes_per_output * y.numel()
    assert all(t.numel() <= 3 * 9 + 3 for t in extra if t.numel() != y.numel())  # per-plane or per-channel only
    y.sum().backward()  # and the backward runs from that state
    assert torch.isfinite(x.grad).all()
