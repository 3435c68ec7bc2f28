"""Small contracts of the pooling layers and their helpers: defaults, argument checks, non-square windows, dtypes.

Each test here was written for mutants that survived ``make mutate`` on ``pooling/`` (issue 19): a changed default,
a swapped index, a dropped argument or an error message that no other test read.
"""

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polypool.pooling import (
    DetailPreservingPool2d,
    LearnedNormPool2d,
    PPool2d,
    StridedConvPool2d,
    build_pooling,
    cpu_fused,
    p_pool2d,
    pooling_parameters,
)
from polypool.pooling.basic import avg_pool
from polypool.pooling.fused_interface import alpha_grad_to_shape, alpha_is_dense
from polypool.pooling.geometry import Window, pad_window_input

# --- geometry -------------------------------------------------------------------------------------------------------


def test_window_output_size_and_overhang_use_each_axis_own_kernel_and_stride():
    window = Window.make((2, 3), (1, 2), 0, ceil_mode=True)
    assert window.output_size(7, 8) == (6, 4)  # rows: (7 - 2) / 1 + 1; cols: ceil((8 - 3) / 2) + 1
    assert tuple(F.max_pool2d(torch.zeros(1, 1, 7, 8), (2, 3), (1, 2), ceil_mode=True).shape[-2:]) == (6, 4)
    assert window.overhang(7, 8) == (0, 1)  # the last column window reads one column past the input


def test_pad_window_input_pads_by_the_padding_plus_the_ceil_overhang():
    window = Window.make(3, 2, 1, ceil_mode=True)  # a 6x6 map: padding 1 on each side, overhang 1 bottom/right
    x = torch.arange(36.0).view(1, 1, 6, 6)
    assert window.padding == (1, 1) and window.overhang(6, 6) == (1, 1)
    torch.testing.assert_close(pad_window_input(x, window), F.pad(x, (1, 2, 1, 2)), rtol=0, atol=0)
    plain = Window.make(2, 2, 0)
    assert pad_window_input(x, plain) is x  # nothing to pad: no copy


def test_a_bad_stride_is_named_in_the_error():
    with pytest.raises(ValueError, match=r"^stride must be an int or a pair of ints, got \(1, 2, 3\)$"):
        Window.make(2, (1, 2, 3))
    with pytest.raises(ValueError, match=r"^padding must be"):
        Window.make(2, 2, (1, 2, 3))


# --- the fused kernels' interface -----------------------------------------------------------------------------------


def test_alpha_is_dense_when_it_varies_over_either_output_axis():
    assert not alpha_is_dense(2.0)
    assert not alpha_is_dense(torch.tensor(2.0))
    assert not alpha_is_dense(torch.ones(1))
    assert not alpha_is_dense(torch.ones(4, 1, 1))  # per channel
    assert alpha_is_dense(torch.ones(5))  # broadcasts over the output's columns
    assert alpha_is_dense(torch.ones(5, 1))  # over its rows
    assert alpha_is_dense(torch.ones(1, 5, 1))  # over its rows, with a leading axis
    assert alpha_is_dense(torch.ones(2, 3, 4, 5))


def test_alpha_grad_to_shape_sums_to_the_alpha_and_takes_its_dtype():
    grad = torch.arange(6.0).view(6)  # per plane, N=2, C=3
    per_channel = alpha_grad_to_shape(grad, False, 2, 3, torch.Size((3, 1, 1)), torch.float64)
    assert per_channel.dtype == torch.float64
    torch.testing.assert_close(per_channel.flatten(), torch.tensor([3.0, 5.0, 7.0], dtype=torch.float64))


# --- the C++ kernel -------------------------------------------------------------------------------------------------


def test_the_cpu_kernel_builds_here_and_can_be_switched_off(monkeypatch):
    """With a C++ compiler the fp32 CPU path is the fused kernel, not a silent fallback to the reference op."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: the CPU kernel cannot build (the reference op serves)")
    monkeypatch.delenv("POLYPOOL_CPU_KERNEL", raising=False)
    assert cpu_fused.enabled()
    assert cpu_fused.load_extension() is not None, "the C++ kernel failed to build; see the RuntimeWarning"
    monkeypatch.setenv("POLYPOOL_CPU_KERNEL", "0")
    assert not cpu_fused.enabled()
    monkeypatch.setenv("POLYPOOL_CPU_KERNEL", "1")
    assert cpu_fused.enabled()


# --- p_pool2d -------------------------------------------------------------------------------------------------------


def test_p_pool2d_names_what_it_got_when_it_is_not_a_tensor():
    with pytest.raises(TypeError, match=r"expects a floating-point tensor, got list$"):
        p_pool2d([1.0, 2.0], 1.0, 2)
    with pytest.raises(TypeError, match=r"got Tensor of dtype torch.int64$"):
        p_pool2d(torch.ones(1, 1, 2, 2, dtype=torch.long), 1.0, 2)


def test_check_accepts_a_float_alpha():
    x = torch.rand(1, 2, 4, 4)
    torch.testing.assert_close(p_pool2d(x, 2.0, 2, check=True), p_pool2d(x, 2.0, 2), rtol=0, atol=0)


@pytest.mark.parametrize("value", [0.0, 0.5, 1.0, 2.0])
def test_the_reference_gradient_is_the_same_for_a_tensor_alpha_as_for_a_float(value):
    """The tensor-alpha branch of the reference backward (its guards at alpha = 0 and 1, on exact zeros) against the
    float-alpha branch, which the loop reference checks."""
    base = torch.relu(torch.randn(1, 2, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    grads = []
    for alpha in (value, torch.tensor(value, dtype=torch.float64)):
        x = base.clone().requires_grad_()
        p_pool2d(x, alpha, 2, 1, backend="reference").pow(2).sum().backward()
        grads.append(x.grad)
    assert (base == 0).any()
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


# --- the layers -----------------------------------------------------------------------------------------------------


def test_ppool_accepts_alpha_init_on_its_range_bounds_and_shows_its_gradient_scale():
    assert PPool2d(2, alpha_init=50.0).alpha.item() == 50.0  # the default range is [1, 50]
    assert PPool2d(2, alpha_init=1.0).alpha.item() == 1.0
    assert "alpha_grad_scale=3, " in repr(PPool2d(2, alpha_grad_scale=3.0))
    assert "alpha_grad_scale" not in repr(PPool2d(2))


@pytest.mark.parametrize("mode", ["layer", "dense"])
def test_ppool_check_raises_on_nan_inputs(mode):
    layer = PPool2d(2, channels=2, alpha_mode=mode, check=True)
    x = torch.rand(1, 2, 4, 4)
    x[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(x)
    assert torch.isnan(PPool2d(2, channels=2, alpha_mode=mode)(x)).any()  # check=False propagates it


def test_dense_ppool_clamps_alpha_to_its_range_and_keeps_count_include_pad():
    torch.manual_seed(0)
    layer = PPool2d(3, 1, 1, channels=2, alpha_mode="dense", alpha_init=2.0, alpha_range=(1.5, 2.0))
    with torch.no_grad():
        layer.alpha_branch.conv.weight.normal_(0, 1.0)  # alpha spreads well past both bounds before the clamp
    x = torch.rand(1, 2, 6, 6)
    y = layer(x)
    stats = layer.alpha_stats()
    assert stats["min"] == 1.5 and stats["max"] == 2.0
    torch.testing.assert_close(y, p_pool2d(x, layer.current_alpha(x), 3, 1, 1), rtol=1e-5, atol=1e-6)

    average = PPool2d(
        3, 1, 1, channels=2, alpha_mode="dense", alpha_init=0.0, alpha_range=(0.0, 0.0), count_include_pad=False
    )
    torch.testing.assert_close(average(x), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), rtol=1e-5, atol=1e-6)


def test_baseline_layer_defaults():
    assert avg_pool(3, 1, 1).count_include_pad is True  # as nn.AvgPool2d
    conv = StridedConvPool2d(2, channels=3)
    assert conv.conv.weight.shape == (3, 3, 2, 2)  # a full conv unless depthwise=True
    norm = LearnedNormPool2d(2, channels=3)
    torch.testing.assert_close(norm.p.detach(), torch.full((3, 1, 1), 2.0))  # starts as the L2 norm
    assert LearnedNormPool2d(2, per_channel=False).p.shape == ()
    with pytest.raises(ValueError, match=r"need 1 <= p_range\[0\] <= p_init <= p_range\[1\], got p_init=0.5"):
        LearnedNormPool2d(2, channels=3, p_init=0.5)


def test_dpp_full_smooths_with_the_binomial_filter_before_the_window_mean():
    layer = DetailPreservingPool2d(2, channels=2, variant="full")
    binomial = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0])) / 16
    torch.testing.assert_close(layer.filter_weight.detach(), binomial.expand(2, 1, 3, 3))
    x = torch.rand(1, 2, 6, 6)
    expected = F.avg_pool2d(F.conv2d(x, binomial.expand(2, 1, 3, 3), padding=1, groups=2), 2)
    torch.testing.assert_close(layer.guide(x), expected)
    lite = DetailPreservingPool2d(2, channels=2)
    torch.testing.assert_close(lite.guide(x), F.avg_pool2d(x, 2))


def test_registry_errors_and_parameter_names():
    with pytest.raises(ValueError, match="padding"):
        build_pooling("avg", 3, 1, (1, 2, 3), count_include_pad=False)
    layer = PPool2d(2, channels=3, alpha_mode="channel")
    assert [name for name, _ in pooling_parameters(layer)] == ["alpha"]
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    assert [name for name, _ in pooling_parameters(model)] == ["1.alpha"]


# --- dense alpha (the side branch in the kernel) --------------------------------------------------------------------


def _branch(channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(channels, 1, 3, 3, generator=g),
        torch.full((channels,), 0.25),
        torch.randn(channels, 1, 1, 1, generator=g),
        torch.tensor([-10.0, 1.0]),
    )  # channel 0's alpha clamps to 0


@pytest.mark.parametrize("fused", [True, False])
def test_dense_p_pool2d_takes_an_unbatched_input_with_every_option(fused):
    from polypool.pooling.dense_alpha import dense_p_pool2d_with_stats

    x = torch.rand(2, 6, 7)
    options = dict(alpha_range=(0.0, 3.0), input_scale=2.0, count_include_pad=False, fused=fused)
    y, alpha, stats = dense_p_pool2d_with_stats(x, *_branch(2), 3, 1, 1, **options)
    y4, alpha4, stats4 = dense_p_pool2d_with_stats(x.unsqueeze(0), *_branch(2), 3, 1, 1, **options)
    assert y.shape == (2, 6, 7) and alpha.shape == (2, 6, 7)
    torch.testing.assert_close(y, y4[0], rtol=0, atol=0)
    torch.testing.assert_close(alpha, alpha4[0], rtol=0, atol=0)
    torch.testing.assert_close(stats, stats4, rtol=0, atol=0)
    assert float(alpha[0].max()) == 0.0  # channel 0 is average pooling, without the padding (count_include_pad)
    torch.testing.assert_close(y[0], F.avg_pool2d(x[:1], 3, 1, 1, count_include_pad=False)[0], rtol=1e-5, atol=1e-6)


def test_dense_p_pool2d_normalises_its_branch_input_by_1_by_default():
    from polypool.pooling.dense_alpha import dense_p_pool2d_with_stats

    x = torch.rand(1, 2, 6, 6)
    default = dense_p_pool2d_with_stats(x, *_branch(2), 3, 1, 1, alpha_range=(0.0, 50.0))
    explicit = dense_p_pool2d_with_stats(x, *_branch(2), 3, 1, 1, alpha_range=(0.0, 50.0), input_scale=1.0)
    doubled = dense_p_pool2d_with_stats(x, *_branch(2), 3, 1, 1, alpha_range=(0.0, 50.0), input_scale=2.0)
    torch.testing.assert_close(default[1], explicit[1], rtol=0, atol=0)
    assert not torch.allclose(default[1], doubled[1])


def test_dense_ppool_counts_the_padding_by_default():
    x = torch.rand(1, 2, 6, 6)
    average = PPool2d(3, 1, 1, channels=2, alpha_mode="dense", alpha_init=0.0, alpha_range=(0.0, 0.0))
    torch.testing.assert_close(average(x), F.avg_pool2d(x, 3, 1, 1), rtol=1e-5, atol=1e-6)


def test_gated_channel_mode_asks_for_channels():
    from polypool.pooling import GatedPool2d

    with pytest.raises(ValueError, match="pass channels=C$"):
        GatedPool2d(2, gate="channel")


def test_an_explicit_triton_request_that_cannot_be_served_says_why(monkeypatch):
    from polypool.pooling import triton_fused

    monkeypatch.setattr(triton_fused, "supports", lambda *args, **kwargs: False)
    monkeypatch.setattr(triton_fused, "failure", lambda: None)
    with pytest.raises(ValueError, match=r"got a torch.float64 tensor on cpu .*switched off after a failure: no\)$"):
        p_pool2d(torch.rand(1, 1, 4, 4, dtype=torch.float64), 2.0, 2, backend="triton")


def test_the_alpha_gradient_has_the_alpha_dtype():
    x = torch.rand(1, 2, 4, 4, requires_grad=True)
    alpha = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    p_pool2d(x, alpha, 2, backend="reference").sum().backward()
    assert alpha.grad.dtype == torch.float64 and x.grad.dtype == torch.float32
