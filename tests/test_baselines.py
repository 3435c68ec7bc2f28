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


# Inside the parameters' ranges (clamp_inward changes the gradient on a bound), so finite differences apply.
INTERIOR = {"dpp": {"lambda_init": 1.0, "alpha_init": 0.5}, "lp": {"p_init": 3.0}, "ppool": {"alpha_init": 3.0}}


@pytest.mark.parametrize("name", POOLING_NAMES)
@pytest.mark.parametrize("window", [(3, 2, 1, True), (2, 2, 0, False)])
def test_gradients_to_input_and_every_parameter_match_finite_differences(name, window):
    layer = build_pooling(name, *window, channels=CHANNELS, **INTERIOR.get(name, {})).double()
    names, params = zip(*layer.named_parameters()) if list(layer.parameters()) else ((), ())
    # Continuous values: no ties (max pooling is differentiable) and no DPP difference within a step of 0, where
    # its asymmetric reward relu(d)^2 has a kink in its derivative that finite differences would see.
    x = 1 + torch.rand(2, CHANNELS, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x.requires_grad_(True)

    def run(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    inputs = (x, *(p.detach().clone().requires_grad_(True) for p in params))
    assert torch.autograd.gradcheck(run, inputs, atol=1e-6, rtol=1e-4)


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
    # a learned convolution has no "padding not counted": the clear error stays there
    with pytest.raises(ValueError, match="cannot express count_include_pad=False"):
        build_pooling("strided_conv", 3, 2, 1, channels=2, count_include_pad=False)
    build_pooling("strided_conv", 3, 2, 1, channels=2, count_include_pad=True)  # what it does anyway
    # without padding the flag changes nothing, ceil-mode overhang included (resnet-D's avg_down pools)
    strided = build_pooling("strided_conv", 2, 2, 0, True, channels=2, count_include_pad=False)
    assert strided(x).shape == F.avg_pool2d(x, 2, 2, 0, True).shape


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_count_include_pad_false_in_the_window_means(ceil_mode):
    """P-pooling at alpha = 0, DPP with alpha = lambda = 0 and Lp at p = 1 are average poolings (of |x| for Lp): with
    count_include_pad=False they leave the padding out, as avg_pool2d(count_include_pad=False) does."""
    x = torch.rand(2, 3, 9, 8)
    want = F.avg_pool2d(x, 3, 2, 1, ceil_mode, count_include_pad=False)
    assert not torch.allclose(want, F.avg_pool2d(x, 3, 2, 1, ceil_mode, count_include_pad=True))
    ppool = build_pooling("ppool", 3, 2, 1, ceil_mode, count_include_pad=False, alpha_init=0.0, alpha_range=(0.0, 1.0))
    assert ppool.count_include_pad is False
    dpp = build_pooling("dpp", 3, 2, 1, ceil_mode, channels=3, count_include_pad=False)
    lp = build_pooling("lp", 3, 2, 1, ceil_mode, channels=3, count_include_pad=False, p_init=1.0)
    for layer in (ppool, dpp, lp):
        torch.testing.assert_close(layer(x), want)


@pytest.mark.parametrize("name,needs", [("strided_conv", "channels"), ("dpp", "channels"), ("lp", "channels")])
def test_layers_that_need_channels_say_so(name, needs):
    with pytest.raises(ValueError, match=needs):
        build_pooling(name, 2)


def test_learned_parameters_are_named_for_the_optimizer():
    model = nn.Sequential(nn.Conv2d(3, CHANNELS, 3), *(build_pooling(n, 2, channels=CHANNELS) for n in POOLING_NAMES))
    names = dict(pooling_parameters(model))
    assert "0.weight" not in names  # the conv is not a pooling layer
    assert set(names) == {
        "3.conv.weight",
        "3.conv.bias",
        "4.gate_weight",
        "5.mix",
        "6.alpha",
        "6.lambda_",
        "7.p",
        "8.alpha",
    }


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


@pytest.mark.parametrize("gate", ["layer", "channel"])
def test_gated_pooling_gate_is_the_sigmoid_of_the_mask_over_each_window(gate):
    # sigmoid(w^T x) window by window, from the definition; and f = s max + (1 - s) avg with it. A 3x3/2 window
    # with padding 1 in ceil mode on 7x8 (output 4x5): zeros in the padding, the last column's windows overhang.
    layer = GatedPool2d(3, 2, 1, True, channels=CHANNELS, gate=gate).double()
    x = torch.rand(2, CHANNELS, 7, 8, dtype=torch.float64)
    gate_values = layer.gate_values(x)
    xp = F.pad(x, (1, 2, 1, 1))  # padding 1, plus one overhang column on the right (ceil mode)
    w = layer.gate_weight.detach().expand(CHANNELS, 1, 3, 3)[:, 0]
    expected = torch.empty(2, CHANNELS, 4, 5, dtype=torch.float64)
    for i in range(4):
        for j in range(5):
            expected[:, :, i, j] = torch.sigmoid((xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3] * w).sum((-2, -1)))
    torch.testing.assert_close(gate_values, expected)
    pooled_max, pooled_avg = F.max_pool2d(x, 3, 2, 1, ceil_mode=True), F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)
    torch.testing.assert_close(layer(x), expected * pooled_max + (1 - expected) * pooled_avg)
    if gate == "channel":
        assert not torch.allclose(gate_values[:, 0], layer.gate_values(x[:, [1, 1, 2, 3]])[:, 0])


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
    layer = DetailPreservingPool2d(
        kernel, stride, padding, ceil_mode, channels=CHANNELS, variant=variant, reward=reward
    )
    with torch.no_grad():
        layer.alpha.uniform_(0, 3)  # any alpha: with lambda = 0 every weight is alpha + 1
    x = torch.randn(2, CHANNELS, 11, 10)
    torch.testing.assert_close(layer(x), F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad=True))


def test_dpp_rewards_details_above_the_mean():
    # One bright detail in a dark 2x2 window, lambda = 2, alpha = 0, eps = 1e-3: the guide is the mean 1/4, so the
    # detail's weight is (3/4)^2 + eps^2 and the others' eps^2 (asym: only values above the mean are rewarded)
    # or (1/4)^2 + eps^2 (sym).
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    x[0, 0, 0, 0] = 1.0
    eps2 = 1e-6
    detail = 0.75**2 + eps2
    for reward, other in (("asym", eps2), ("sym", 0.25**2 + eps2)):
        layer = DetailPreservingPool2d(2, channels=1, reward=reward, lambda_init=2.0).double()
        assert layer(x).item() == pytest.approx(detail / (detail + 3 * other), rel=1e-12), reward
    assert detail / (detail + 3 * eps2) > 0.99  # asym: almost the detail itself; sym: 3/4
    assert detail / (detail + 3 * (0.0625 + eps2)) == pytest.approx(0.75, abs=1e-5)


def test_lp_limits():
    x = torch.randn(2, CHANNELS, 9, 11, dtype=torch.float64)
    layer = LearnedNormPool2d(3, 2, 1, channels=CHANNELS, p_init=1.0).double()
    torch.testing.assert_close(layer(x), F.avg_pool2d(x.abs(), 3, 2, 1, count_include_pad=True))
    distinct = (1 + torch.randperm(2 * CHANNELS * 99).double() * 0.05).reshape(2, CHANNELS, 9, 11)
    large = LearnedNormPool2d(3, 2, 0, channels=CHANNELS, p_init=1e4, p_range=(1.0, 1e4)).double()
    torch.testing.assert_close(large(distinct), F.max_pool2d(distinct, 3, 2), rtol=1e-3, atol=0)


def test_lp_at_large_p_and_zero_windows_matches_a_log_space_reference():
    layer = LearnedNormPool2d(2, channels=CHANNELS, p_init=50.0)
    x = torch.rand(1, CHANNELS, 8, 8, generator=torch.Generator().manual_seed(0)) * 3e4 + 1.0
    x[..., :4, :4] = 0  # four all-zero windows per channel
    x.requires_grad_(True)
    y = layer(x)
    grad = torch.rand(y.shape, generator=torch.Generator().manual_seed(1)) + 0.5
    y.backward(grad)
    # (mean |x|^p)^(1/p) = exp((logsumexp(p ln|x|) - ln 4) / p): no overflow at 3e4^50, and independent of the
    # layer's max-normalised form; zero windows give 0 and pass no gradient (their max is 0 and detached).
    x64 = x.detach().double().requires_grad_(True)
    p64 = torch.tensor(50.0, dtype=torch.float64, requires_grad=True)
    cols = F.unfold(x64, 2, stride=2).view(1, CHANNELS, 4, 16)
    nonzero = cols.detach().amax(2) > 0
    logs = torch.where(cols > 0, cols, 1.0).log()  # only the all-zero windows hold zeros: those are set below
    y64 = torch.where(nonzero, torch.exp((torch.logsumexp(p64 * logs, 2) - torch.log(torch.tensor(4.0))) / p64), 0.0)
    y64 = y64.view(1, CHANNELS, 4, 4)
    gx64, gp64 = torch.autograd.grad(y64, (x64, p64), grad.double())
    torch.testing.assert_close(y.double(), y64.detach(), rtol=1e-5, atol=0)
    assert (y[..., :2, :2] == 0).all() and (x.grad[..., :4, :4] == 0).all()
    torch.testing.assert_close(x.grad.double(), gx64, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(layer.p.grad.sum().double(), gp64, rtol=1e-4, atol=1e-3)


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
