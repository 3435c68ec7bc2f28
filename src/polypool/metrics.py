"""Metrics that look at details: Boundary IoU and trimap mIoU, as torchmetrics ``Metric``s with summed states.

Both are computed with torch ops only (max-pool erosion and dilation), so they run on the GPU and reduce over DDP
ranks like the mIoU; pixels labelled ``ignore_index`` count nowhere. Distances are chessboard distances (a
(2d+1) x (2d+1) square). Each image is measured at its own size: ``update(preds, target, sizes)`` takes the real
(height, width) of each image of a padded batch and crops it first (:func:`unpadded`), so neither d nor the bands
see the padding.

* :class:`BoundaryIoU` (Cheng et al., CVPR 2021), as the official ``mask_to_boundary`` (bowenc0221/boundary-iou-api,
  ``boundary_iou/utils/boundary_utils.py``): per class, |G_d ∩ P_d| / |G_d ∪ P_d|, where G_d (P_d) are the pixels
  of the ground-truth (predicted) mask of the class within d pixels of that mask's contour, the image border
  counting as contour, and d = ``round(dilation_ratio`` x the image diagonal``)``, at least 1 (Python's ``round``, as
  the official code). Summed over the dataset before the division.
* :class:`TrimapIoU` (DeepLab's trimap experiment, ``MyVOCevalsegBoundary.m`` of deeplab-public-ver2): the IoU over
  the non-void pixels within w pixels of a void (``ignore_index``) pixel, for each band width w: on PASCAL VOC, whose
  objects are outlined by a void band, exactly DeepLab's band. Where two labels meet without void between them
  (Cityscapes, ADE20K, touching objects), the pixels on either side of the change are 1 px from it, as a pixel next
  to a void band is: the band also takes the non-void pixels within w - 1 px of a pixel whose 3x3 neighbourhood holds
  another non-void label. ``compute()`` gives per-class IoU; the tables average the classes with ``nanmean`` (classes
  absent from a band in truth and prediction are skipped), where DeepLab's script takes a plain mean over all 21.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from typing_extensions import override

from .wandb_keys import TRIMAP_WIDTHS


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


def label_change(target: Tensor, ignore_index: int = 255) -> Tensor:
    """Non-void pixels of a label map (N, H, W) whose 3x3 neighbourhood holds another non-void label (the image
    edge does not count)."""
    valid = target != ignore_index
    high_source = torch.where(valid, target, torch.full_like(target, -1))[:, None].float()
    low_source = torch.where(valid, target, torch.full_like(target, 1 << 20))[:, None].float()
    high = F.max_pool2d(F.pad(high_source, (1, 1, 1, 1), value=-1.0), 3, stride=1)[:, 0]
    low = -F.max_pool2d(F.pad(-low_source, (1, 1, 1, 1), value=-float(1 << 20)), 3, stride=1)[:, 0]
    own = target.float()
    return valid & ((high > own) | (low < own))


def trimap_band(target: Tensor, width: int, ignore_index: int = 255) -> Tensor:
    """The non-void pixels within ``width`` px of a void pixel (DeepLab's band: ``imdilate`` of the void mask with a
    (2w+1) square, outside the image not void) or within ``width`` - 1 px of a :func:`label_change` pixel."""
    void = target == ignore_index
    return (dilate(void, width) | dilate(label_change(target, ignore_index), width - 1)) & ~void


def unpadded(preds: Tensor, target: Tensor, sizes: Tensor | None):
    """(pred, target) class maps (1, h, w) of each image of a batch, cropped to its real ``sizes`` (N, 2) when the
    batch was padded (:func:`polypool.data.transforms.pad_collate`); the whole batch at once without ``sizes``."""
    if preds.shape != target.shape or preds.ndim != 3:
        raise ValueError(
            f"preds and target must be class maps of the same shape (N, H, W), got "
            f"{tuple(preds.shape)} and {tuple(target.shape)}"
        )
    if sizes is None:
        yield preds, target
        return
    if len(sizes) != len(target):
        raise ValueError(f"sizes must give one (height, width) per image: {len(sizes)} for {len(target)} images")
    for i, (height, width) in enumerate(sizes.tolist()):
        if not (0 < height <= target.shape[-2] and 0 < width <= target.shape[-1]):
            raise ValueError(f"image {i}'s size {(height, width)} does not fit the batch's {tuple(target.shape[-2:])}")
        yield preds[i : i + 1, :height, :width], target[i : i + 1, :height, :width]


class BoundaryIoU(Metric):
    """Per-class Boundary IoU (a tensor of ``num_classes``; NaN where a class has no boundary pixel in truth or
    prediction). ``update(preds, target)`` with class maps (N, H, W).

    Example:
        >>> import torch
        >>> from polypool.metrics import BoundaryIoU
        >>> target = torch.zeros(1, 8, 8, dtype=torch.long)
        >>> target[:, 2:6, 2:6] = 1  # a 4 x 4 square of class 1
        >>> preds = torch.zeros_like(target)
        >>> preds[:, 2:6, 3:7] = 1  # predicted one pixel to the right
        >>> metric = BoundaryIoU(num_classes=3)
        >>> metric.boundary_width(8, 8)  # d: 2% of the diagonal, at least 1 px
        1
        >>> metric.update(preds, target)
        >>> metric.compute()  # class 2 is in neither map: NaN
        tensor([0.7308, 0.3333,    nan])
        >>> metric = BoundaryIoU(num_classes=3)
        >>> metric.update(preds, target, sizes=torch.tensor([[6, 6]]))  # a 6 x 6 image padded to 8 x 8
        >>> metric.compute()
        tensor([0.6667, 0.5714,    nan])
    """

    full_state_update: bool = False
    is_differentiable: bool = False
    higher_is_better: bool = True
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    def __init__(self, num_classes: int, ignore_index: int = 255, dilation_ratio: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if not 0 < dilation_ratio < 1:
            raise ValueError(f"dilation_ratio must be in (0, 1), got {dilation_ratio}")
        self.num_classes, self.ignore_index, self.dilation_ratio = num_classes, ignore_index, dilation_ratio
        self.add_state("intersection", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def boundary_width(self, height: int, width: int) -> int:
        """d of an image of ``height`` x ``width``: ``int(round(ratio * diagonal))``, at least 1, as the official
        ``mask_to_boundary`` (Python's round: halves to even)."""
        return max(1, round(self.dilation_ratio * math.hypot(height, width)))

    @override
    def update(self, preds: Tensor, target: Tensor, sizes: Tensor | None = None) -> None:
        """Class maps (N, H, W); ``sizes`` (N, 2): each image's real size in a padded batch (d and the boundaries are
        those of the image, not of the padded map)."""
        for pred_maps, target_maps in unpadded(preds, target, sizes):
            self._update(pred_maps, target_maps)

    def _update(self, preds: Tensor, target: Tensor) -> None:
        d = self.boundary_width(*target.shape[-2:])
        valid = target != self.ignore_index
        for c in range(self.num_classes):
            truth, pred = target == c, preds == c
            if not (truth.any() or pred.any()):
                continue
            g, p = inner_boundary(truth, d) & valid, inner_boundary(pred, d) & valid
            self.intersection[c] += (g & p).sum()
            self.union[c] += (g | p).sum()

    @override
    def compute(self) -> Tensor:
        union = self.union.double()
        return torch.where(union > 0, self.intersection.double() / union.clamp(min=1), torch.nan).float()


class TrimapIoU(Metric):
    """mIoU within bands of ``widths`` pixels around the ground-truth boundaries (:func:`trimap_band`): ``compute()``
    returns a tensor
    (len(widths), num_classes) of per-class IoU (NaN for a class absent from a band in truth and prediction); the
    trimap mIoU of width w is the nanmean of its row.

    Example:
        >>> import torch
        >>> from polypool.metrics import TrimapIoU
        >>> target = torch.zeros(1, 10, 10, dtype=torch.long)
        >>> target[:, 2:8, 2:8] = 255  # a void band around the object, as PASCAL VOC draws it
        >>> target[:, 3:7, 3:7] = 1  # a 4 x 4 object of class 1
        >>> preds = torch.zeros_like(target)
        >>> preds[:, 3:7, 3:6] = 1  # its right column missed
        >>> metric = TrimapIoU(num_classes=2, widths=(1, 2))
        >>> metric.update(preds, target)
        >>> metric.compute()  # one row per band width, one column per class
        tensor([[0.8750, 0.6667],
                [0.9412, 0.7500]])
        >>> metric.compute().nanmean(1)  # the trimap mIoU of each width
        tensor([0.7708, 0.8456])
    """

    full_state_update: bool = False
    is_differentiable: bool = False
    higher_is_better: bool = True
    plot_lower_bound: float = 0.0
    plot_upper_bound: float = 1.0

    def __init__(self, num_classes: int, widths: Sequence[int] = TRIMAP_WIDTHS, ignore_index: int = 255, **kwargs):
        super().__init__(**kwargs)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be positive band widths in pixels, got {widths}")
        self.num_classes, self.widths, self.ignore_index = num_classes, tuple(int(w) for w in widths), ignore_index
        self.add_state(
            "confmat", torch.zeros(len(self.widths), num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    @override
    def update(self, preds: Tensor, target: Tensor, sizes: Tensor | None = None) -> None:
        """Class maps (N, H, W); ``sizes`` (N, 2): each image's real size in a padded batch (the padding, void in the
        target, would otherwise put the image's real edges into every band)."""
        for pred_maps, target_maps in unpadded(preds, target, sizes):
            self._update(pred_maps, target_maps)

    def _update(self, preds: Tensor, target: Tensor) -> None:
        for i, w in enumerate(self.widths):
            band = trimap_band(target, w, self.ignore_index)
            index = target[band] * self.num_classes + preds[band].clamp(0, self.num_classes - 1)
            self.confmat[i] += torch.bincount(index, minlength=self.num_classes**2).view(
                self.num_classes, self.num_classes
            )

    @override
    def compute(self) -> Tensor:
        confmat = self.confmat.double()
        tp = confmat.diagonal(dim1=1, dim2=2)
        union = confmat.sum(1) + confmat.sum(2) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.nan).float()
