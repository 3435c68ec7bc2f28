"""Boundary IoU and trimap mIoU against an independent implementation (SciPy's chessboard distance transform and
rank filters, per image in NumPy), on hand-made cases and random masks."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from polypool.metrics import BoundaryIoU, TrimapIoU


def reference_inner_boundary(mask: np.ndarray, d: int) -> np.ndarray:
    """Mask pixels whose chessboard distance to the background (the outside of the image included) is <= d."""
    distance = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
    return mask & (distance <= d)


def reference_boundary_iou(preds, targets, num_classes, ratio=0.02, ignore=255):
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, target in zip(preds, targets):
        d = max(1, math.ceil(ratio * math.hypot(*target.shape)))
        valid = target != ignore
        for c in range(num_classes):
            g = reference_inner_boundary(target == c, d) & valid
            p = reference_inner_boundary(pred == c, d) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def reference_trimap(preds, targets, num_classes, widths, ignore=255):
    confmats = np.zeros((len(widths), num_classes, num_classes))
    for pred, target in zip(preds, targets):
        boundary = ndimage.maximum_filter(target, 3, mode="nearest") != ndimage.minimum_filter(target, 3, mode="nearest")
        distance = ndimage.distance_transform_cdt(~boundary, metric="chessboard")
        for i, w in enumerate(widths):
            band = (distance <= w) & (target != ignore)
            np.add.at(confmats[i], (target[band], pred[band]), 1)
    tp = np.diagonal(confmats, axis1=1, axis2=2)
    union = confmats.sum(1) + confmats.sum(2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def square(shift=0, size=64):
    mask = np.zeros((size, size), dtype=np.int64)
    mask[10:30, 10 + shift:30 + shift] = 1
    return mask


def test_a_square_predicted_one_pixel_off():
    target, pred = square(), square(shift=1)
    metric = BoundaryIoU(2)
    metric.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    ours = metric.compute()
    expected = reference_boundary_iou([pred], [target], 2)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)
    # d = ceil(0.02 * 64 * sqrt 2) = 2: rings of 20^2 - 16^2 = 144 pixels; shifted by one, they share 4 x 19 in
    # the top and bottom strips and 16 x 2 in the sides: 108
    assert metric.intersection[1].item() == 108 and metric.union[1].item() == 180
    mask_iou = (380 / 420)
    assert ours[1].item() == pytest.approx(108 / 180) and ours[1].item() < mask_iou - 0.3  # detail-sensitive


def test_a_thin_line_missed_entirely():
    target = np.zeros((48, 48), dtype=np.int64)
    target[5:45, 20] = 1  # a 1-pixel pole
    pred = np.zeros_like(target)
    boundary = BoundaryIoU(2)
    boundary.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    assert boundary.compute()[1].item() == 0.0 and boundary.union[1].item() == 40
    trimap = TrimapIoU(2, widths=(1, 8))
    trimap.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    iou = trimap.compute()
    assert iou[0, 1].item() == 0.0 and iou[1, 1].item() == 0.0
    np.testing.assert_allclose(iou.numpy(), reference_trimap([pred], [target], 2, (1, 8)), rtol=1e-6)
    # boundary pixels: the pole and its 8-neighbours (columns 19-21, rows 4-45); the band of width 1 around them:
    # columns 18-22, rows 3-46, 40 of them the pole
    assert trimap.confmat[0].sum().item() == 5 * 44 and trimap.confmat[0, 1].sum().item() == 40


def random_maps(seed, n=3, size=(37, 53), classes=4):
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        coarse = rng.integers(0, classes, size=(size[0] // 6 + 1, size[1] // 6 + 1))
        fine = np.kron(coarse, np.ones((6, 6), dtype=np.int64))[:size[0], :size[1]]
        noise = rng.random(size) < 0.05
        fine[noise] = rng.integers(0, classes, size=noise.sum())
        maps.append(fine)
    return maps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_match_the_scipy_reference(seed):
    targets, preds = random_maps(seed), random_maps(seed + 100)
    targets[0][:3] = 255  # ignored pixels count nowhere
    boundary, trimap = BoundaryIoU(4), TrimapIoU(4, widths=(1, 2, 4, 8))
    for pred, target in zip(preds, targets):
        boundary.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
        trimap.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    np.testing.assert_allclose(boundary.compute().numpy(), reference_boundary_iou(preds, targets, 4), rtol=1e-6)
    np.testing.assert_allclose(trimap.compute().numpy(), reference_trimap(preds, targets, 4, (1, 2, 4, 8)),
                               rtol=1e-6)


def test_a_perfect_prediction_and_a_wide_band_equal_the_plain_miou():
    target = random_maps(5, n=1)[0]
    perfect = BoundaryIoU(4)
    perfect.update(torch.from_numpy(target)[None], torch.from_numpy(target)[None])
    assert torch.all(perfect.compute() == 1.0)
    pred = random_maps(6, n=1)[0]
    wide = TrimapIoU(4, widths=(200,))
    wide.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    confmat = np.zeros((4, 4))
    np.add.at(confmat, (target.ravel(), pred.ravel()), 1)
    tp = np.diag(confmat)
    np.testing.assert_allclose(wide.compute()[0].numpy(), tp / (confmat.sum(0) + confmat.sum(1) - tp), rtol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="dilation_ratio"):
        BoundaryIoU(3, dilation_ratio=0)
    with pytest.raises(ValueError, match="band widths"):
        TrimapIoU(3, widths=(0,))
    with pytest.raises(ValueError, match="same shape"):
        BoundaryIoU(3).update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))
