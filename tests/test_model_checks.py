"""SegmentationModel's schedule and test-time augmentation checked by value: the poly learning rate mid-way through
training, and the flipped view's logits flipped back before they are averaged."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from polypool.models import SegmentationModel


def small_model(**kwargs):
    return SegmentationModel(backbone="resnet18", num_classes=3, output_stride=32, **kwargs)


@pytest.mark.parametrize("power", [0.9, 2.0])
def test_poly_schedule_mid_way(power):
    # lr_t = base_lr * (1 - t / T)^power for every parameter group, at steps where powers give different values
    total = 40
    model = small_model(poly_power=power, lr=0.01, head_lr_mult=10.0)
    model.trainer = SimpleNamespace(estimated_stepping_batches=total)
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    base = {g["name"]: g["lr"] for g in optimizer.param_groups}  # t = 0
    parts = {name.split("/")[0]: lr for name, lr in base.items() if name.endswith("weight")}
    assert parts["backbone"] == pytest.approx(0.01) and parts["head"] == pytest.approx(0.1)
    for step in range(1, 31):
        optimizer.step()
        scheduler.step()
        if step in (1, 10, 20, 30):
            factor = (1 - step / total) ** power
            got = {g["name"]: g["lr"] for g in optimizer.param_groups}
            assert got == pytest.approx({name: lr * factor for name, lr in base.items()}, rel=1e-9), step
    backbone = next(g for g in optimizer.param_groups if g["name"].startswith("backbone"))
    assert backbone["lr"] == pytest.approx(0.01 * 0.25**power, rel=1e-9)  # t = 30 of 40


class Asymmetric(nn.Module):
    """A network whose output is not flip-equivariant: a 1x5 kernel with different weights left and right."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, (1, 5), padding=(0, 2))
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=torch.Generator().manual_seed(2)))
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


def per_pixel_distribution(total):
    """TTA outputs as class distributions: sum or mean over the views, both normalise to the same."""
    return total / total.sum(1, keepdim=True)


def test_tta_flip_averages_the_flipped_view_flipped_back():
    model = small_model(tta_flip=True, tta_scales=(1.0,)).eval()
    net = Asymmetric()
    model.network = net
    images = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model.predict_logits(images)
        plain = net(images).softmax(1)
        flipped_back = net(images.flip(-1)).softmax(1).flip(-1)
        not_flipped_back = net(images.flip(-1)).softmax(1)
        maps = model.predict_step((images, None), 0)
    expected = per_pixel_distribution(plain + flipped_back)
    assert (expected - per_pixel_distribution(plain + not_flipped_back)).abs().max() > 0.1  # the flip shows
    assert not torch.equal(expected.argmax(1), (plain + not_flipped_back).argmax(1))
    torch.testing.assert_close(per_pixel_distribution(got), expected, rtol=1e-5, atol=1e-6)
    assert maps.shape == (2, 8, 12) and torch.equal(maps, expected.argmax(1))


def test_tta_scales_resize_each_view_and_come_back_to_the_input_size():
    model = small_model(tta_flip=True, tta_scales=(0.5, 1.0)).eval()
    net = Asymmetric()
    model.network = net
    images = torch.rand(1, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.predict_logits(images)
        expected = 0
        for scale in (0.5, 1.0):
            view = (
                F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
                if scale != 1
                else images
            )
            for flip in (False, True):
                logits = net(view.flip(-1)).flip(-1) if flip else net(view)
                expected = expected + F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False).softmax(
                    1
                )
    assert got.shape == (1, 3, 8, 12)
    torch.testing.assert_close(per_pixel_distribution(got), per_pixel_distribution(expected), rtol=1e-5, atol=1e-6)
