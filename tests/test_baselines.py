"""The baseline poolings of the paper's tables, behind build_pooling: shapes, gradients, and their limit cases."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polypool.pooling import (
    POOLING_NAMES,
    DetailPreservingPool2d,
    GatedPool2d,
    LearnedNormPool2d,
    MixedPool2d,
    StridedConvPool2d,
    build_pooling,
    pooling_parameters,
)

WINDOWS = list(itertools.product([2, 3], [1, 2, 3], [0, 1], [False, True]))
CHANNELS = 4


@pytest.mark.parametrize("name", POOLING_NAMES)
def test_output_shape_matches_max_pool_on_a_grid(name):
    x = torch.rand(2, CHANNELS, 11, 8)
    for kernel, stride, padding, ceil_mode in WINDOWS:
        layer = build_pooling(name, kernel, stride, padding, ceil_mode, channels=CHANNELS)
        expected = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)(x).shape
        assert layer(x).shape == expected, (kernel, stride, padding, ceil_mode)


# Away from a degenerate start: DPP starts at lambda = 0, where every weight is alpha + 1 and y does not depend on
# alpha at all (its gradient is exactly 0 there; lambda's is not, so training moves off it).
NON_DEGENERATE = {"dpp": {"lambda_init": 1.0}}


@pytest.mark.parametrize("name", POOLING_NAMES)
def test_backward_gives_finite_gradients_to_input_and_every_parameter(name):
    layer = build_pooling(name, 3, 2, 1, True, channels=CHANNELS, **NON_DEGENERATE.get(name, {}))
    x = torch.rand(2, CHANNELS, 13, 10)
    x[:, :, :3] = 0  # ReLU zeros, and all-zero windows
    x.requires_grad_(True)
    layer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for param_name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
        assert param.grad.abs().sum() > 0, f"{name}.{param_name} gets no gradient"


@pytest.mark.slow
@pytest.mark.parametrize("name", POOLING_NAMES)
def test_compiles_with_torch_compile(name):
    torch._dynamo.reset()
    layer = build_pooling(name, 3, 2, 1, False, channels=CHANNELS)
    x = torch.rand(2, CHANNELS, 12, 12, requires_grad=True)
    compiled = torch.compile(layer)
    y = compiled(x)
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="valid names: max, avg, strided_conv, gated, mixed, dpp, lp, ppool"):
        build_pooling("maxx", 2)


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(TypeError, match=r"got unexpected option\(s\) \['alpha_init'\]; it accepts"):
        build_pooling("max", 2, alpha_init=3.0)


def test_count_include_pad_carries_over_or_fails_clearly():
    x = torch.rand(1, 2, 7, 7)
    avg = build_pooling("avg", 3, 2, 1, count_include_pad=False)
    torch.testing.assert_close(avg(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))
    gated = build_pooling("gated", 3, 2, 1, count_include_pad=False)
    assert gated.count_include_pad is False
    with pytest.raises(ValueError, match="cannot express count_include_pad=False"):
        build_pooling("ppool", 3, 2, 1, count_include_pad=False)
    build_pooling("ppool", 3, 2, 1, count_include_pad=True)  # what P-pooling does anyway
    # without padding the flag changes nothing, ceil-mode overhang included (resnet-D's avg_down pools)
    ppool = build_pooling("ppool", 2, 2, 0, True, count_include_pad=False, alpha_init=0.0, alpha_range=(0.0, 1.0))
    x = torch.rand(1, 2, 7, 7)
    torch.testing.assert_close(ppool(x), F.avg_pool2d(x, 2, 2, 0, True, count_include_pad=False))


@pytest.mark.parametrize("name,needs", [("strided_conv", "channels"), ("dpp", "channels"), ("lp", "channels")])
def test_layers_that_need_channels_say_so(name, needs):
    with pytest.raises(ValueError, match=needs):
        build_pooling(name, 2)


def test_learned_parameters_are_named_for_the_optimizer():
    model = nn.Sequential(nn.Conv2d(3, CHANNELS, 3), *(build_pooling(n, 2, channels=CHANNELS) for n in POOLING_NAMES))
    names = dict(pooling_parameters(model))
    assert "0.weight" not in names  # the conv is not a pooling layer
    assert set(names) == {"3.conv.weight", "3.conv.bias", "4.gate_weight", "5.mix", "6.alpha", "6.lambda_", "7.p",
                          "8.alpha"}


# --- limit cases --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_strided_conv_starts_as_average_pooling(depthwise, kernel, stride, padding):
    layer = StridedConvPool2d(kernel, stride, padding, channels=CHANNELS, depthwise=depthwise)
    x = torch.randn(2, CHANNELS, 12, 9)
    torch.testing.assert_close(layer(x), F.avg_pool2d(x, kernel, stride, padding, count_include_pad=True))
    assert layer.conv.groups == (CHANNELS if depthwise else 1)


def test_gated_pooling_limits():
    x = torch.rand(2, CHANNELS, 10, 10) + 0.1  # positive, so w^T x has the sign of w
    for gate in ("layer", "channel"):
        layer = GatedPool2d(2, channels=CHANNELS, gate=gate)
        with torch.no_grad():
            layer.gate_weight.fill_(1e3)
        torch.testing.assert_close(layer(x), F.max_pool2d(x, 2))
        with torch.no_grad():
            layer.gate_weight.fill_(-1e3)
        torch.testing.assert_close(layer(x), F.avg_pool2d(x, 2))


def test_gated_pooling_gate_depends_on_the_region():
    layer = GatedPool2d(2, channels=CHANNELS)
    gate = layer.gate_values(torch.rand(1, CHANNELS, 8, 8))
    assert gate.shape == (1, CHANNELS, 4, 4) and gate.std() > 0


def test_mixed_pooling_limits():
    x = torch.randn(2, CHANNELS, 9, 9)
    layer = MixedPool2d(3, 2, 1)
    with torch.no_grad():
        layer.mix.fill_(5.0)  # clamped to 1
    torch.testing.assert_close(layer(x), F.max_pool2d(x, 3, 2, 1))
    with torch.no_grad():
        layer.mix.fill_(0.0)
    torch.testing.assert_close(layer(x), F.avg_pool2d(x, 3, 2, 1))


@pytest.mark.parametrize("variant", ["lite", "full"])
@pytest.mark.parametrize("reward", ["asym", "sym"])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(2, 2, 0, False), (3, 2, 1, True)])
def test_dpp_with_lambda_zero_is_average_pooling(variant, reward, kernel, stride, padding, ceil_mode):
    layer = DetailPreservingPool2d(kernel, stride, padding, ceil_mode, channels=CHANNELS, variant=variant,
                                   reward=reward)
    with torch.no_grad():
        layer.alpha.uniform_(0, 3)  # any alpha: with lambda = 0 every weight is alpha + 1
    x = torch.randn(2, CHANNELS, 11, 10)
    torch.testing.assert_close(layer(x), F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad=True))


def test_dpp_rewards_details_above_the_mean():
    x = torch.zeros(1, 1, 2, 2)
    x[0, 0, 0, 0] = 1.0  # one bright detail in a dark window
    layer = DetailPreservingPool2d(2, channels=1, reward="asym", lambda_init=2.0)
    assert layer(x).item() > 0.25 + 0.2  # well above the mean, towards the detail
    sym = DetailPreservingPool2d(2, channels=1, reward="sym", lambda_init=2.0)
    assert 0 <= sym(x).item() <= 1


def test_lp_limits():
    x = torch.randn(2, CHANNELS, 9, 11, dtype=torch.float64)
    layer = LearnedNormPool2d(3, 2, 1, channels=CHANNELS, p_init=1.0).double()
    torch.testing.assert_close(layer(x), F.avg_pool2d(x.abs(), 3, 2, 1, count_include_pad=True))
    distinct = (1 + torch.randperm(2 * CHANNELS * 99).double() * 0.05).reshape(2, CHANNELS, 9, 11)
    large = LearnedNormPool2d(3, 2, 0, channels=CHANNELS, p_init=1e4, p_range=(1.0, 1e4)).double()
    torch.testing.assert_close(large(distinct), F.max_pool2d(distinct, 3, 2), rtol=1e-3, atol=0)


def test_lp_is_finite_at_large_p_and_zero_windows():
    layer = LearnedNormPool2d(2, channels=CHANNELS, p_init=50.0)
    x = torch.rand(1, CHANNELS, 8, 8) * 3e4
    x[..., :4, :4] = 0
    x.requires_grad_(True)
    y = layer(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and (y[..., :2, :2] == 0).all()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.p.grad).all()


def test_parameters_initialised_on_a_bound_still_learn():
    from polypool.pooling import PPool2d
    from polypool.pooling.bounded import clamp_inward

    x = torch.tensor([0.0, -1.0, 2.0, 5.0], requires_grad=True)
    y = clamp_inward(x, 0.0, 3.0)
    assert y.tolist() == [0.0, 0.0, 2.0, 3.0]
    y.backward(torch.tensor([-1.0, 1.0, 1.0, -1.0]))  # inward at 0 and 3 is kept only for index 0
    assert x.grad.tolist() == [-1.0, 0.0, 1.0, 0.0]
    pool = PPool2d(2, alpha_init=0.0, alpha_range=(0.0, 50.0))
    x = torch.rand(1, 1, 4, 4) + torch.eye(4)
    (-pool(x).sum()).backward()  # a loss that wants larger outputs: alpha should grow towards max pooling
    assert pool.alpha.grad.item() < 0
    pool.alpha.grad = None
    pool(x).sum().backward()  # one that wants alpha below 0: blocked at the bound
    assert pool.alpha.grad.item() == 0
