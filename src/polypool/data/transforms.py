"""Joint image/mask transforms: every geometric change moves the image and its mask together.

Images are ``uint8`` tensors ``(3, H, W)`` until :class:`Normalize`, masks ``int64`` ``(H, W)`` with 255 = ignore.
Masks are only ever resampled with nearest neighbour. Every transform takes an optional ``torch.Generator``: the
datasets draw one per (seed, epoch, sample), so augmentation does not depend on worker scheduling or on where a
resumed run restarted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .classes import IGNORE_INDEX

Sample = tuple[Tensor, Tensor]
Generator = Optional[torch.Generator]


class Compose:
    def __init__(self, transforms: Sequence[Callable[[Tensor, Tensor], Sample]]):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, mask: Tensor, generator: Generator = None) -> Sample:
        for transform in self.transforms:
            image, mask = transform(image, mask, generator)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({self.transforms})"


def resize(image: Tensor, mask: Tensor, size: tuple[int, int]) -> Sample:
    """Bilinear for the image, nearest for the mask."""
    image = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image.round().clamp(0, 255).to(torch.uint8), mask


class RandomScale:
    """Rescale by a factor drawn uniformly from ``scale_range`` (DeepLab's [0.5, 2.0] by default)."""

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0)):
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def __call__(self, image: Tensor, mask: Tensor, generator: Generator = None) -> Sample:
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand((), generator=generator).item()
        height, width = image.shape[-2:]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return resize(image, mask, size) if size != (height, width) else (image, mask)

    def __repr__(self) -> str:
        return f"RandomScale({self.scale_range})"


class RandomCrop:
    """A random ``crop_size`` crop; a smaller sample is first padded at the bottom/right, the image with its
    mean colour ``fill`` (0..255 per channel) and the mask with 255, so padding is never learned as a class."""

    def __init__(self, crop_size: tuple[int, int], fill: Sequence[float]):
        self.crop_size = crop_size
        self.fill = torch.tensor([round(255 * f) for f in fill], dtype=torch.uint8)

    def __call__(self, image: Tensor, mask: Tensor, generator: Generator = None) -> Sample:
        crop_h, crop_w = self.crop_size
        height, width = image.shape[-2:]
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        if pad_h or pad_w:
            padded = self.fill.view(3, 1, 1).expand(3, height + pad_h, width + pad_w).clone()
            padded[:, :height, :width] = image
            padded_mask = torch.full((height + pad_h, width + pad_w), IGNORE_INDEX, dtype=mask.dtype)
            padded_mask[:height, :width] = mask
            image, mask = padded, padded_mask
            height, width = image.shape[-2:]
        top = int(torch.randint(0, height - crop_h + 1, (), generator=generator).item())
        left = int(torch.randint(0, width - crop_w + 1, (), generator=generator).item())
        return image[:, top : top + crop_h, left : left + crop_w], mask[top : top + crop_h, left : left + crop_w]

    def __repr__(self) -> str:
        return f"RandomCrop({self.crop_size})"


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Tensor, mask: Tensor, generator: Generator = None) -> Sample:
        if torch.rand((), generator=generator).item() < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """uint8 image -> float ``(image / 255 - mean) / std``; the mask is untouched."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: Tensor, mask: Tensor, generator: Generator = None) -> Sample:
        return (image.float() / 255 - self.mean) / self.std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def train_transform(
    crop_size: tuple[int, int], scale_range: tuple[float, float], mean, std, hflip: bool = True
) -> Compose:
    """Random scale, crop (padding with the mean / 255), horizontal flip (unless ``hflip=False``), normalise."""
    flip = [RandomHorizontalFlip()] if hflip else []
    return Compose([RandomScale(scale_range), RandomCrop(crop_size, mean), *flip, Normalize(mean, std)])


def val_transform(mean, std) -> Compose:
    """Full resolution: normalise only."""
    return Compose([Normalize(mean, std)])


def pad_collate(batch: Sequence[Sample], size_divisor: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack samples of different sizes: pad to the largest (rounded up to ``size_divisor``) at the bottom/right,
    images with 0 (the mean, after normalising) and masks with 255 (ignored by the loss and the metric). Returns
    ``(images, masks, sizes)``, ``sizes`` (N, 2) the real (height, width) of each image, so that the metrics measure
    each image at its own size (:func:`polypool.metrics.unpadded`)."""
    height = max(image.shape[-2] for image, _ in batch)
    width = max(image.shape[-1] for image, _ in batch)
    height, width = (math.ceil(height / size_divisor) * size_divisor, math.ceil(width / size_divisor) * size_divisor)
    images = torch.zeros(len(batch), batch[0][0].shape[0], height, width, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), height, width), IGNORE_INDEX, dtype=torch.long)
    sizes = torch.tensor([tuple(mask.shape[-2:]) for _, mask in batch], dtype=torch.long).view(len(batch), 2)
    for i, (image, mask) in enumerate(batch):
        images[i, :, : image.shape[-2], : image.shape[-1]] = image
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks, sizes
