"""The ReLU hint (issue 16, item 6): ``swap_pooling`` tells a P-pooling layer that its input is a ReLU's output, and
``p_pool2d`` then skips the negative-input check, which costs a device sync per forward on the GPU (and so prevents
CUDA-graph capture). Without the hint the check stays."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polypool.pooling import PPool2d, cpu_fused, fused_interface, p_pool2d, triton_fused
from polypool.surgery import swap_pooling

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("backend", ["triton", "cpu_fused"])
def test_hint_skips_the_negative_check(monkeypatch, backend):
    if (backend == "triton" and not triton_fused.enabled()) or (backend == "cpu_fused" and not cpu_fused.enabled()):
        pytest.skip("backend turned off")
    module = triton_fused if backend == "triton" else cpu_fused
    device = DEVICE if backend == "triton" else "cpu"
    checks = []
    original = fused_interface.raise_if_negative
    monkeypatch.setattr(module, "raise_if_negative", lambda *args: checks.append(1) or original(*args))
    x = torch.rand(1, 2, 6, 6, device=device, requires_grad=True)
    p_pool2d(x, 3.0, 2, backend=backend)  # the first call (and the Triton path's first-result check)
    checks.clear()
    y = p_pool2d(x, 3.0, 2, backend=backend, input_nonnegative=True)
    assert checks == []
    torch.testing.assert_close(y, p_pool2d(x, 3.0, 2, backend=backend))
    assert checks == [1]  # without the hint the check (and its sync) stays


def test_hint_skips_the_reference_check(monkeypatch):
    import polypool.pooling.functional as functional

    calls = []
    monkeypatch.setattr(functional, "nonnegative_finite", lambda x: calls.append(1) or True)
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    p_pool2d(x, 3.0, 2, input_nonnegative=True)
    assert calls == []
    p_pool2d(x, 3.0, 2)
    assert calls == [1]


class Net(nn.Module):
    """A module pool after a ReLU, one after a BatchNorm (can be negative), a functional pool after a ReLU module."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.MaxPool2d(2),
        )
        self.act = nn.ReLU()

    def forward(self, x):
        return F.max_pool2d(self.act(self.features(x)), 2)


def test_swap_pooling_sets_the_hint_only_after_a_relu():
    model = Net()
    report = swap_pooling(model, "ppool", input_size=(3, 16, 16))
    layers = [m for m in model.modules() if isinstance(m, PPool2d)]
    assert len(layers) == 3
    assert model.features[2].input_nonnegative is True
    assert model.features[5].input_nonnegative is False
    functional_layers = [m for m in layers if m is not model.features[2] and m is not model.features[5]]
    assert [m.input_nonnegative for m in functional_layers] == [True]
    assert sorted(s.after_relu for s in report.sites if s.kind) == [False, True, True]
    y = model(torch.randn(2, 3, 16, 16))  # the BatchNorm output is negative somewhere: still shifted correctly
    assert torch.isfinite(y).all()


def test_swap_pooling_vgg16_pools_all_follow_a_relu():
    import timm

    model = timm.create_model("vgg16", pretrained=False, num_classes=0)
    swap_pooling(model, "ppool", input_size=(3, 32, 32))
    layers = [m for m in model.modules() if isinstance(m, PPool2d)]
    assert len(layers) == 5 and all(m.input_nonnegative for m in layers)
