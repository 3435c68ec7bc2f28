"""Sliding-window inference, for images larger than the training crop (Cityscapes' 1024x2048)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor


def sliding_window_logits(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    num_classes: int,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
) -> Tensor:
    """Logits ``(N, num_classes, H, W)`` averaged over overlapping ``crop_size`` windows.

    ``model`` maps ``(N, 3, h, w)`` to logits of the same spatial size. An image smaller than the crop is padded
    with zeros (the mean, after normalising) and the padding cropped off again. Windows step by ``stride``; the last
    window of each row and column is aligned to the image border, so every pixel is covered.
    """
    crop_h, crop_w = crop_size
    stride_h, stride_w = stride
    if not (0 < stride_h <= crop_h and 0 < stride_w <= crop_w):
        raise ValueError(f"need 0 < stride <= crop_size, got stride={stride}, crop_size={crop_size}")
    n, _, height, width = images.shape
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    padded = F.pad(images, (0, pad_w, 0, pad_h))
    full_h, full_w = padded.shape[-2:]
    logits = padded.new_zeros(n, num_classes, full_h, full_w)
    counts = padded.new_zeros(1, 1, full_h, full_w)
    rows = max(math.ceil((full_h - crop_h) / stride_h), 0) + 1
    cols = max(math.ceil((full_w - crop_w) / stride_w), 0) + 1
    for row in range(rows):
        top = min(row * stride_h, full_h - crop_h)
        for col in range(cols):
            left = min(col * stride_w, full_w - crop_w)
            window = padded[..., top : top + crop_h, left : left + crop_w]
            logits[..., top : top + crop_h, left : left + crop_w] += model(window)
            counts[..., top : top + crop_h, left : left + crop_w] += 1
    return (logits / counts)[..., :height, :width]
