"""The Triton kernels against the reference op, on fresh random inputs.

On a GPU machine they run on CUDA; elsewhere through Triton's CPU interpreter (``TRITON_INTERPRET=1``, set in
conftest.py), which executes the same kernel code with numpy. Every buffer a kernel fills is poisoned with NaN
first, so an element a kernel forgets to write fails the comparison.
"""

import itertools

import pytest
import torch
from fused_checks import check_negative_flag, compare_to_reference

from polypool.pooling import p_pool2d, triton_fused
from polypool.pooling.geometry import Window

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRID = list(itertools.product([2, 3], [1, 2, 3], [0, 1], [False, True]))

pytestmark = pytest.mark.skipif(not triton_fused.enabled(), reason="POLYPOOL_TRITON=0 turns the Triton path off")


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """Kernel outputs start as NaN (the negative-input flags as 1, "negative") instead of what torch.empty holds."""

    def poisoned(shape, dtype, device, channels_last=False):
        empty = original(shape, dtype, device, channels_last)
        return empty.fill_(float("nan") if dtype.is_floating_point else 1)

    original = triton_fused._alloc

    monkeypatch.setattr(triton_fused, "_alloc", poisoned)


def test_triton_is_installed_and_serves_this_device():
    assert triton_fused.kernels() is not None, "triton is a dependency (torch installs it); it failed to import"
    x = torch.rand(1, 1, 4, 4, device=DEVICE)
    assert triton_fused.supports(x, 1.0, allow_cpu=True)


def compare(x, alpha, kernel, stride, padding, ceil_mode, rtol=1e-5):
    compare_to_reference(
        x.to(DEVICE),
        alpha.to(DEVICE) if isinstance(alpha, torch.Tensor) else alpha,
        kernel,
        stride,
        padding,
        ceil_mode,
        backend="triton",
        function_name="PPool2dTriton",
        rtol=rtol,
    )


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", GRID)
def test_grid_channel_alpha(kernel, stride, padding, ceil_mode):
    x = torch.rand(2, 4, 11, 13)
    x[x < 0.2] = 0  # ReLU zeros
    x[0, 0] = 0  # all-zero windows
    alpha = torch.rand(4, 1, 1) * 20
    alpha[0] = 0.0  # average pooling, 0^0 = 1
    alpha[1] = 1.0  # r^(a-1) at r = 0 is 1
    alpha[2] = 0.5  # the w = 0 convention at r = 0
    compare(x, alpha, kernel, stride, padding, ceil_mode)


@pytest.mark.parametrize("alpha_kind", ["float", "layer", "dense"])
@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode", [(2, 2, 0, False), (3, 2, 1, True), ((2, 3), (1, 2), (1, 0), False)]
)
def test_alpha_shapes(alpha_kind, kernel, stride, padding, ceil_mode):
    x = torch.rand(2, 3, 15, 12) * 5
    out_h, out_w = Window.make(kernel, stride, padding, ceil_mode).output_size(15, 12)
    alpha = {"float": 30.0, "layer": torch.tensor(7.5), "dense": torch.rand(2, 3, out_h, out_w) * 50}[alpha_kind]
    compare(x, alpha, kernel, stride, padding, ceil_mode)


@pytest.mark.parametrize("alpha", [0.0, 1e-3, 1.0, 50.0, 1e4])
def test_extreme_alphas_and_large_activations(alpha):
    x = torch.rand(2, 3, 12, 12) * 3e4
    compare(x, torch.tensor(alpha), 3, 2, 1, False)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("alpha", [0.0, 5.0, 50.0])
def test_low_precision_is_computed_in_fp32(dtype, rtol, alpha):
    """fp16/bf16 in and out, fp32 inside: the result is the fp32 result rounded once (q is saved in fp32)."""
    x = (torch.rand(2, 3, 12, 12) * 3e4 if dtype == torch.float16 else torch.rand(2, 3, 12, 12) * 1e6).to(dtype)
    compare(x, torch.full((3, 1, 1), alpha), 3, 2, 1, True, rtol=rtol)


def test_negative_non_contiguous_and_channels_last_inputs():
    compare(
        torch.randn(1, 2, 9, 40), torch.rand(2, 1, 1) * 10, 2, 2, 0, True
    )  # windows with negatives shifted by their minimum
    compare(
        torch.rand(2, 4, 12, 14).contiguous(memory_format=torch.channels_last), torch.rand(4, 1, 1) * 10, 3, 2, 1, False
    )
    compare(torch.rand(2, 3, 24, 14)[:, :, ::2], torch.tensor(3.0), 2, 2, 0, False)


def test_planes_span_several_blocks():
    """More outputs and inputs per plane than one program's block, and blocks that straddle two planes: the flat
    index's plane and position, and the per-plane dalpha sums."""
    block = triton_fused.block_size(2 * 40 * 41)
    assert block < 40 * 41 and (40 * 41) % block  # the second plane starts inside a block
    compare(torch.rand(1, 2, 40, 41), torch.rand(2, 1, 1) * 10, 3, 1, 1, False)


def test_nan_propagates_and_check_raises():
    x = torch.rand(1, 1, 6, 6, device=DEVICE)
    x[0, 0, 1, 1] = float("nan")
    y = p_pool2d(x, 5.0, 2, backend="triton")
    assert torch.isnan(y[0, 0, 0, 0]) and torch.isfinite(y[0, 0, 1:, :]).all() and torch.isfinite(y[0, 0, :, 1:]).all()
    with pytest.raises(ValueError, match="NaN or Inf"):
        p_pool2d(x, 5.0, 2, check=True, backend="triton")


def test_dispatch(monkeypatch):
    x = torch.rand(1, 2, 8, 8, device=DEVICE)
    if DEVICE == "cuda":  # the default for CUDA tensors
        assert "PPool2dTriton" in type(p_pool2d(x.requires_grad_(), 2.0, 2).grad_fn).__name__
    else:  # on CPU the default stays the C++ kernel; the interpreter only serves an explicit backend="triton"
        assert "PPool2dTriton" not in type(p_pool2d(x.requires_grad_(), 2.0, 2).grad_fn).__name__
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            p_pool2d(x, 2.0, 2, backend="triton")
    with pytest.raises(ValueError, match="fp32/fp16/bf16"):
        p_pool2d(x.double(), 2.0, 2, backend="triton")
    monkeypatch.setenv("POLYPOOL_TRITON", "0")
    with pytest.raises(ValueError, match="POLYPOOL_TRITON enabled: False"):
        p_pool2d(x, 2.0, 2, backend="triton")


def test_negative_inputs_are_flagged_by_the_kernel():
    """Every program writes its flag (poisoned as "negative" by the fixture above)."""
    check_negative_flag(triton_fused.PPool2dTriton, "triton", DEVICE)


@pytest.mark.parametrize("window,visits", [((2, 2, 0), 1), ((3, 2, 1), 4), ((3, 1, 1), 9), ((2, 3, 0), 1)])
def test_dx_visits_only_the_windows_of_its_residue_class(monkeypatch, window, visits):
    """The dx gather visits ceil(KH/SH) x ceil(KW/SW) candidate windows per input (1 for VGG's 2x2/2, 4 for 3x3/2),
    not all KH x KW window offsets, and reads each window's precomputed factors there: the per-output state (1/m,
    q, g/den) is worked out once per output (one _window_state per program of the factors kernel), not at every
    visit. Counted in the interpreter, per program (64 inputs, 16 or fewer outputs: one program each)."""
    if DEVICE == "cuda":
        pytest.skip("counts calls in Triton's interpreter")
    module = triton_fused.kernels()
    states, visited = [], []
    original_state, original_factors = module._window_state, getattr(module, "_load_factors", None)
    monkeypatch.setattr(
        module, "_window_state", lambda *args, **kwargs: states.append(1) or original_state(*args, **kwargs)
    )
    if original_factors is not None:
        monkeypatch.setattr(
            module, "_load_factors", lambda *args, **kwargs: visited.append(1) or original_factors(*args, **kwargs)
        )
    x = torch.rand(1, 1, 8, 8, requires_grad=True)  # 64 inputs: one program
    y = p_pool2d(x, 3.0, *window, backend="triton")
    states.clear()
    visited.clear()
    y.backward(torch.ones_like(y))
    assert len(visited) == visits
    assert len(states) == 1  # once, per output, however many windows contain each input
    reference = x.detach().clone().requires_grad_(True)
    p_pool2d(reference, 3.0, *window, backend="reference").backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, reference.grad, rtol=1e-5, atol=1e-6)
