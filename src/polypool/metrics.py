"""Metrics that look at details: Boundary IoU and trimap mIoU, as torchmetrics ``Metric``s with summed states.

Both are computed with torch ops only (max-pool erosion and dilation), so they run on the GPU and reduce over DDP
ranks like the mIoU; pixels labelled ``ignore_index`` count nowhere. Distances are chessboard distances (a
(2d+1) x (2d+1) square), as the OpenCV erosion of the Boundary IoU reference code; the image border counts as a
contour (the mask is padded with background).

* :class:`BoundaryIoU` (Cheng et al., CVPR 2021): per class, |G_d ∩ P_d| / |G_d ∪ P_d|, where G_d (P_d) are the
  pixels of the ground-truth (predicted) mask of the class within d pixels of that mask's own contour, d =
  ``dilation_ratio`` x the image diagonal (rounded up, at least 1). Summed over the dataset before the division.
* :class:`TrimapIoU` (DeepLab's trimap experiment): the mIoU over the pixels within w pixels of a ground-truth
  boundary (a pixel whose 3x3 neighbourhood holds another label, 255 included), for each band width w.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def erode(masks: Tensor, radius: int) -> Tensor:
    """Binary erosion of ``masks`` (N, H, W) by a (2r+1)-square, the outside of the image counting as background."""
    if radius <= 0:
        return masks.bool()
    background = F.pad((~masks.bool()).float()[:, None], (radius,) * 4, value=1.0)
    return F.max_pool2d(background, 2 * radius + 1, stride=1)[:, 0] == 0


def dilate(masks: Tensor, radius: int) -> Tensor:
    """Binary dilation of ``masks`` (N, H, W) by a (2r+1)-square."""
    if radius <= 0:
        return masks.bool()
    return F.max_pool2d(masks.float()[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def inner_boundary(masks: Tensor, width: int) -> Tensor:
    """The pixels of ``masks`` within ``width`` pixels (chessboard) of the mask's contour."""
    masks = masks.bool()
    return masks & ~erode(masks, width)


def label_boundary(target: Tensor) -> Tensor:
    """Pixels of a label map (N, H, W) whose 3x3 neighbourhood holds another label (the image edge does not)."""
    t = target[:, None].float()
    high = F.max_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    low = -F.max_pool2d(F.pad(-t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (high != low)[:, 0]


class BoundaryIoU(Metric):
    """Per-class Boundary IoU (a tensor of ``num_classes``; NaN where a class has no boundary pixel in truth or
    prediction). ``update(preds, target)`` with class maps (N, H, W)."""

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = 255, dilation_ratio: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if not 0 < dilation_ratio < 1:
            raise ValueError(f"dilation_ratio must be in (0, 1), got {dilation_ratio}")
        self.num_classes, self.ignore_index, self.dilation_ratio = num_classes, ignore_index, dilation_ratio
        self.add_state("intersection", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def boundary_width(self, height: int, width: int) -> int:
        return max(1, math.ceil(self.dilation_ratio * math.hypot(height, width)))

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape or preds.ndim != 3:
            raise ValueError(f"preds and target must be class maps of the same shape (N, H, W), got "
                             f"{tuple(preds.shape)} and {tuple(target.shape)}")
        d = self.boundary_width(*target.shape[-2:])
        valid = target != self.ignore_index
        for c in range(self.num_classes):
            truth, pred = target == c, preds == c
            if not (truth.any() or pred.any()):
                continue
            g, p = inner_boundary(truth, d) & valid, inner_boundary(pred, d) & valid
            self.intersection[c] += (g & p).sum()
            self.union[c] += (g | p).sum()

    def compute(self) -> Tensor:
        union = self.union.double()
        return torch.where(union > 0, self.intersection.double() / union.clamp(min=1), torch.nan).float()


class TrimapIoU(Metric):
    """mIoU within bands of ``widths`` pixels around the ground-truth boundaries: ``compute()`` returns a tensor
    (len(widths), num_classes) of per-class IoU (NaN for a class absent from a band in truth and prediction); the
    trimap mIoU of width w is the nanmean of its row."""

    full_state_update = False

    def __init__(self, num_classes: int, widths: Sequence[int] = (1, 2, 4, 8, 16, 32), ignore_index: int = 255,
                 **kwargs):
        super().__init__(**kwargs)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive band widths in pixels, got {widths}")
        self.num_classes, self.widths, self.ignore_index = num_classes, tuple(int(w) for w in widths), ignore_index
        self.add_state("confmat", torch.zeros(len(self.widths), num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape or preds.ndim != 3:
            raise ValueError(f"preds and target must be class maps of the same shape (N, H, W), got "
                             f"{tuple(preds.shape)} and {tuple(target.shape)}")
        boundary = label_boundary(target)
        valid = target != self.ignore_index
        for i, w in enumerate(self.widths):
            band = dilate(boundary, w) & valid
            index = target[band] * self.num_classes + preds[band].clamp(0, self.num_classes - 1)
            self.confmat[i] += torch.bincount(index, minlength=self.num_classes ** 2).view(
                self.num_classes, self.num_classes)

    def compute(self) -> Tensor:
        confmat = self.confmat.double()
        tp = confmat.diagonal(dim1=1, dim2=2)
        union = confmat.sum(1) + confmat.sum(2) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan).float()
