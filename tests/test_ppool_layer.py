"""The PPool2d layer: alpha modes, range, statistics and drop-in use in place of nn.MaxPool2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polypool.pooling import PPool2d, p_pool2d


@pytest.mark.parametrize("mode", ["layer", "channel", "dense"])
@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(2, None, 0, False), (3, 2, 1, True), (3, 1, 1, False)])
def test_output_shape_matches_max_pool_and_alpha_gets_gradients(mode, kernel, stride, padding, ceil_mode):
    pool = PPool2d(kernel, stride, padding, ceil_mode, channels=6, alpha_mode=mode, alpha_init=5.0)
    x = torch.rand(2, 6, 13, 10, requires_grad=True)
    y = pool(x)
    assert y.shape == nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)(x).shape
    y.square().sum().backward()
    alpha_params = [(name, p) for name, p in pool.named_parameters()]
    assert alpha_params and all(name.startswith("alpha") for name, _ in alpha_params)
    for name, p in alpha_params:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_layer_and_channel_alpha_equal_the_functional_op():
    x = torch.rand(2, 4, 9, 9)
    pool = PPool2d(3, 2, 1, channels=4, alpha_mode="channel", alpha_init=2.0, alpha_range=(0.0, 50.0))
    with torch.no_grad():
        pool.alpha.copy_(torch.tensor([0.0, 1.0, 7.0, 40.0]).view(4, 1, 1))
    torch.testing.assert_close(pool(x), p_pool2d(x, pool.alpha, 3, 2, 1))


def test_alpha_zero_layer_is_average_pooling():
    pool = PPool2d(3, 2, 1, alpha_init=0.0, alpha_range=(0.0, 50.0))
    x = torch.rand(2, 3, 11, 11)
    torch.testing.assert_close(pool(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=True))


def test_alpha_is_clamped_to_its_range():
    pool = PPool2d(2, alpha_init=30.0, alpha_range=(1.0, 50.0))
    with torch.no_grad():
        pool.alpha.fill_(500.0)
    assert pool.current_alpha().item() == 50.0
    assert pool.alpha_stats() == {"mean": 50.0, "min": 50.0, "max": 50.0}


def test_dense_alpha_starts_near_init_and_within_range():
    pool = PPool2d(2, channels=5, alpha_mode="dense", alpha_init=30.0, alpha_range=(1.0, 50.0))
    x = torch.rand(3, 5, 16, 16)
    alpha = pool.current_alpha(x)
    assert alpha.shape == (3, 5, 8, 8)
    assert (alpha >= 1).all() and (alpha <= 50).all()
    assert abs(alpha.mean().item() - 30.0) < 5.0
    assert torch.isnan(torch.tensor(pool.alpha_stats()["mean"]))  # no forward yet
    pool(x)
    stats = pool.alpha_stats()
    assert stats["min"] <= stats["mean"] <= stats["max"]
    assert stats["mean"] == pytest.approx(alpha.mean().item(), rel=1e-5)


def test_dense_branch_input_is_detached():
    pool = PPool2d(2, channels=2, alpha_mode="dense", alpha_init=3.0, alpha_range=(0.0, 50.0))
    x = torch.rand(1, 2, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(pool.current_alpha(x).sum(), pool.alpha_branch.proj.bias)
    assert g.abs().sum() > 0
    assert torch.autograd.grad(pool.current_alpha(x).sum(), x, allow_unused=True)[0] is None


def test_channel_stats_and_repr():
    pool = PPool2d(2, channels=3, alpha_mode="channel", alpha_init=4.0)
    stats = pool.alpha_stats()
    assert stats["mean"] == 4.0 and stats["per_channel"].tolist() == [4.0, 4.0, 4.0]
    text = repr(pool)
    assert "alpha_mode=channel" in text and "mean=4" in text


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha_mode="pixel"), "alpha_mode must be one of"),
        (dict(alpha_mode="channel"), "needs the number of input channels"),
        (dict(alpha_mode="dense"), "needs the number of input channels"),
        (dict(alpha_init=0.5), "outside alpha_range"),
        (dict(alpha_range=(5.0, 1.0)), "alpha_range must be"),
        (dict(alpha_range=(-1.0, 1.0), alpha_init=0.0), "alpha_range must be"),
    ],
)
def test_bad_layer_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PPool2d(2, **kwargs)


def test_state_dict_round_trip():
    pool = PPool2d(3, 2, 1, channels=4, alpha_mode="dense")
    clone = PPool2d(3, 2, 1, channels=4, alpha_mode="dense")
    clone.load_state_dict(pool.state_dict())
    x = torch.rand(1, 4, 10, 10)
    torch.testing.assert_close(pool(x), clone(x))
