"""Sliding-window inference covers every pixel once or more and averages the windows."""

import pytest
import torch
from torch import nn

from polypool.inference import sliding_window_logits


@pytest.mark.parametrize("size", [(37, 53), (20, 24), (64, 64)])
def test_sliding_window_equals_a_full_pass_for_a_pointwise_model(size):
    model = nn.Conv2d(3, 5, 1)  # pointwise: the result cannot depend on the tiling
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        tiled = sliding_window_logits(model, images, 5, crop_size=(24, 32), stride=(16, 20))
        torch.testing.assert_close(tiled, model(images))
    assert tiled.shape == (2, 5, *size)


def test_overlapping_windows_are_averaged():
    calls = []

    def model(window):
        calls.append(window.shape[-2:])
        return torch.full((window.shape[0], 1, *window.shape[-2:]), float(len(calls)))

    logits = sliding_window_logits(model, torch.zeros(1, 3, 10, 16), 1, crop_size=(10, 10), stride=(10, 6))
    assert len(calls) == 2  # columns at 0 and 6 (the last aligned to the border)
    assert logits[0, 0, 0, 0] == 1 and logits[0, 0, 0, 15] == 2 and logits[0, 0, 0, 8] == 1.5
    with pytest.raises(ValueError, match="stride <= crop_size"):
        sliding_window_logits(model, torch.zeros(1, 3, 4, 4), 1, crop_size=(2, 2), stride=(3, 1))
