"""Boundary IoU and trimap mIoU against the references themselves (issue 29): the official Boundary IoU code's
``mask_to_boundary`` run with OpenCV as that code runs it, and DeepLab's trimap band built from the void pixels as
``MyVOCevalsegBoundary.m`` builds it; plus hand-made cases, padded batches and random masks."""

import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from polypool.data.transforms import pad_collate
from polypool.metrics import BoundaryIoU, TrimapIoU

# The references, as read with the search tool's file reader. Facts, not code: the functions below follow them.
BOUNDARY_IOU_REFERENCE = {
    "repository": "bowenc0221/boundary-iou-api",
    "path": "boundary_iou/utils/boundary_utils.py",
    "commit": "8006aa98e931ee410dbb1fede30271d5bc859769",  # byte-identical at 37d25586a677b043ed585f10e5c42d4e80176ea9
    "function": "mask_to_boundary(mask, dilation_ratio=0.02)",
    "d": "int(round(dilation_ratio * sqrt(h**2 + w**2))), set to 1 when below 1",
    "border": "cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)",
    "erosion": "cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d), cropped back to h x w",
    "returns": "mask - eroded mask",
    "iou": "boundary IoU = |gt boundary & dt boundary| / |gt boundary | dt boundary|",
}
TRIMAP_REFERENCE = {
    "repository": "hszhao/PSPNet",
    "path": "matlab/my_script/MyVOCevalsegBoundary.m",  # deeplab-public-ver2's script
    "commit": "c479f4fe941ea207cbd3ec7b6ab0de72d493e4ca",
    "band": "imdilate(gtim == 255, strel('square', 2*w + 1)) & (gtim ~= 255)",
    "confusion": "rows: ground truth, columns: prediction, over the band's pixels, summed over the images",
    "mean": "plain mean over the classes (no NaN skipping)",
    "widths": "EvalCRF_Boundary.m: 1 to 40",
}


def official_d(height: int, width: int, ratio: float = 0.02) -> int:
    d = round(ratio * np.sqrt(height**2 + width**2))
    return 1 if d < 1 else d


def official_mask_to_boundary(mask: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """The official ``mask_to_boundary``: a 1-px zero border, a 3x3 erosion repeated d times, mask minus eroded."""
    h, w = mask.shape
    padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=official_d(h, w, ratio))[1 : h + 1, 1 : w + 1]
    return (mask.astype(np.uint8) - eroded).astype(bool)


def reference_boundary_iou(preds, targets, num_classes, ratio=0.02, ignore=255):
    """Per class, the official boundaries of truth and prediction, intersection over union summed over the images
    (each image at its own size); ignored pixels count nowhere."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, target in zip(preds, targets):
        valid = target != ignore
        for c in range(num_classes):
            g = official_mask_to_boundary(target == c, ratio) & valid
            p = official_mask_to_boundary(pred == c, ratio) & valid
            inter[c] += (g & p).sum()
            union[c] += (g | p).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def deeplab_band(target: np.ndarray, w: int, ignore=255) -> np.ndarray:
    """DeepLab's band: the void mask dilated by a (2w+1) square (outside the image not void), minus the void."""
    void = target == ignore
    return ndimage.binary_dilation(void, np.ones((2 * w + 1, 2 * w + 1), bool)) & ~void


def change_band(target: np.ndarray, w: int, ignore=255) -> np.ndarray:
    """Where labels meet without void: non-void pixels within chessboard distance w of the pixel edge between two
    different non-void labels (the pixels on either side of the edge at distance 1), from SciPy's distance transform."""
    valid = target != ignore
    change = np.zeros_like(valid)
    h, wd = target.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.full_like(target, ignore)
            shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : wd + min(dx, 0)] = target[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : wd + min(-dx, 0)
            ]
            change |= valid & (shifted != ignore) & (shifted != target)
    if not change.any():
        return change
    distance = ndimage.distance_transform_cdt(~change, metric="chessboard") + 1  # a changing pixel is 1 from the edge
    return valid & (distance <= w)


def reference_trimap(preds, targets, num_classes, widths, ignore=255):
    confmats = np.zeros((len(widths), num_classes, num_classes))
    for pred, target in zip(preds, targets):
        for i, w in enumerate(widths):
            band = deeplab_band(target, w, ignore) | change_band(target, w, ignore)
            np.add.at(confmats[i], (target[band], pred[band]), 1)
    tp = np.diagonal(confmats, axis1=1, axis2=2)
    union = confmats.sum(1) + confmats.sum(2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def square(shift=0, size=64):
    mask = np.zeros((size, size), dtype=np.int64)
    mask[10:30, 10 + shift : 30 + shift] = 1
    return mask


def test_a_square_predicted_one_pixel_off():
    target, pred = square(), square(shift=1)
    metric = BoundaryIoU(2)
    metric.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    ours = metric.compute()
    expected = reference_boundary_iou([pred], [target], 2)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)
    # d = round(0.02 * 64 * sqrt 2) = 2: rings of 20^2 - 16^2 = 144 pixels; shifted by one, they share 4 x 19 in
    # the top and bottom strips and 16 x 2 in the sides: 108
    assert metric.intersection[1].item() == 108 and metric.union[1].item() == 180
    mask_iou = 380 / 420
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
    # no void here: the band of width 1 is the pixels next to a change of label, the pole and its 8-neighbours
    # (columns 19-21, rows 4-45), 40 of them the pole
    assert trimap.confmat[0].sum().item() == 3 * 42 and trimap.confmat[0, 1].sum().item() == 40


def random_maps(seed, n=3, size=(37, 53), classes=4):
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        coarse = rng.integers(0, classes, size=(size[0] // 6 + 1, size[1] // 6 + 1))
        fine = np.kron(coarse, np.ones((6, 6), dtype=np.int64))[: size[0], : size[1]]
        noise = rng.random(size) < 0.05
        fine[noise] = rng.integers(0, classes, size=noise.sum())
        maps.append(fine)
    return maps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_match_the_references(seed):
    targets, preds = random_maps(seed), random_maps(seed + 100)
    targets[0][:3] = 255  # ignored pixels count nowhere
    boundary, trimap = BoundaryIoU(4), TrimapIoU(4, widths=(1, 2, 4, 8))
    for pred, target in zip(preds, targets):
        boundary.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
        trimap.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    np.testing.assert_allclose(boundary.compute().numpy(), reference_boundary_iou(preds, targets, 4), rtol=1e-6)
    np.testing.assert_allclose(trimap.compute().numpy(), reference_trimap(preds, targets, 4, (1, 2, 4, 8)), rtol=1e-6)


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


# -- against the references: d, padded batches, void bands, touching objects --------------------------------------
@pytest.mark.parametrize("size", [(375, 500), (333, 500), (512, 512), (366, 500), (281, 500)])
def test_d_is_rounded_as_the_official_code_at_voc_sizes(size):
    """VOC's sizes where rounding and rounding up disagree: (375, 500) 12.5 -> 12, (333, 500) 12.01 -> 12,
    (512, 512) 14.48 -> 14."""
    d = BoundaryIoU(2).boundary_width(*size)
    assert d == official_d(*size)
    assert d != max(1, math.ceil(0.02 * math.hypot(*size)))  # the sizes were chosen where they differ


@pytest.mark.parametrize("size", [(75, 100), (67, 100), (36, 100)])
def test_boundaries_equal_opencvs_at_sizes_where_round_and_ceil_differ(size):
    """75 x 100: 0.02 x 125 = 2.5 -> 2 (ceil: 3); 67 x 100: 2.41 -> 2; 36 x 100: 2.13 -> 2."""
    assert official_d(*size) != max(1, math.ceil(0.02 * math.hypot(*size)))
    targets, preds = random_maps(7, n=2, size=size), random_maps(8, n=2, size=size)
    metric = BoundaryIoU(4)
    for pred, target in zip(preds, targets):
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    np.testing.assert_allclose(metric.compute().numpy(), reference_boundary_iou(preds, targets, 4), rtol=1e-6)


def test_a_perfect_prediction_of_a_padded_image_scores_one():
    """A 90 x 90 image in a batch padded to 96 x 96 (validation pads to multiples of 8): with the image's size the
    metrics see the image, not the padding (without it: about 0.72 Boundary IoU)."""
    target = np.zeros((90, 90), dtype=np.int64)
    target[30:, 30:] = 1  # an object that meets the image's bottom and right edges
    target[5:20, 5:70] = 2
    _images, masks, sizes = pad_collate([(torch.zeros(3, 90, 90), torch.from_numpy(target))], size_divisor=8)
    assert masks.shape == (1, 96, 96)
    # the prediction runs on into the padding: each class that meets the real bottom/right edge goes on past it
    preds = torch.nn.functional.pad(torch.from_numpy(target)[None, None].float(), (0, 6, 0, 6), mode="replicate")[
        :, 0
    ].long()
    boundary = BoundaryIoU(3)
    boundary.update(preds, masks, sizes)
    assert torch.all(boundary.compute() == 1.0)
    unpadded = BoundaryIoU(3)
    unpadded.update(preds, masks)
    assert unpadded.compute()[1] < 0.8  # what the metric saw before: the object's real edges lost


def test_a_padded_batch_gives_the_numbers_of_its_images_one_by_one():
    shapes = [(61, 77), (90, 90), (45, 100)]
    targets = [random_maps(20 + i, n=1, size=s)[0] for i, s in enumerate(shapes)]
    preds = [random_maps(30 + i, n=1, size=s)[0] for i, s in enumerate(shapes)]
    targets[1][40:44] = 255  # a void band
    _, masks, sizes = pad_collate([(torch.zeros(3, *t.shape), torch.from_numpy(t)) for t in targets], 8)
    _, padded_preds, _ = pad_collate([(torch.zeros(3, *p.shape), torch.from_numpy(p)) for p in preds], 8)
    batch_b, batch_t = BoundaryIoU(4), TrimapIoU(4, widths=(1, 2, 4))
    batch_b.update(padded_preds, masks, sizes)
    batch_t.update(padded_preds, masks, sizes)
    one_b, one_t = BoundaryIoU(4), TrimapIoU(4, widths=(1, 2, 4))
    for pred, target in zip(preds, targets):
        one_b.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
        one_t.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    assert torch.equal(batch_b.intersection, one_b.intersection) and torch.equal(batch_b.union, one_b.union)
    assert torch.equal(batch_t.confmat, one_t.confmat)
    np.testing.assert_allclose(batch_b.compute().numpy(), reference_boundary_iou(preds, targets, 4), rtol=1e-6)
    np.testing.assert_allclose(batch_t.compute().numpy(), reference_trimap(preds, targets, 4, (1, 2, 4)), rtol=1e-6)


def voc_like(seed, size=(64, 80), classes=5, band=3):
    """Objects outlined by a void band, as VOC draws them: labels change only through 255."""
    rng = np.random.default_rng(seed)
    target = np.zeros(size, dtype=np.int64)
    for _ in range(4):
        y, x = rng.integers(0, size[0] - 10), rng.integers(0, size[1] - 10)
        target[y : y + rng.integers(6, 30), x : x + rng.integers(6, 30)] = rng.integers(1, classes)
    edge = ndimage.maximum_filter(target, 3) != ndimage.minimum_filter(target, 3)
    target[ndimage.binary_dilation(edge, iterations=band // 2)] = 255
    return target


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_with_void_bands_the_trimap_band_is_deeplabs_exactly(seed):
    target = voc_like(seed)
    assert not change_band(target, 40).any()  # labels change only through void, as on VOC
    pred = random_maps(seed, n=1, size=target.shape, classes=5)[0]
    widths = (1, 2, 3, 5, 8)
    metric = TrimapIoU(5, widths=widths)
    metric.update(torch.from_numpy(pred)[None], torch.from_numpy(target)[None])
    for i, w in enumerate(widths):
        band = deeplab_band(target, w)
        confmat = np.zeros((5, 5))
        np.add.at(confmat, (target[band], pred[band]), 1)
        np.testing.assert_array_equal(metric.confmat[i].numpy(), confmat)  # DeepLab's pixels, counted as DeepLab


def test_the_band_of_width_one_is_the_pixels_next_to_void_or_to_another_label():
    target = np.zeros((12, 12), dtype=np.int64)
    target[:, 6:] = 1  # two labels touching without void: columns 5 and 6 are 1 px from the change
    target[2, :] = 255  # a void line: rows 1 and 3 are 1 px from it
    metric = TrimapIoU(2, widths=(1, 2))
    metric.update(torch.from_numpy(target)[None], torch.from_numpy(target)[None])
    band1 = np.zeros((12, 12), bool)
    band1[[1, 3], :] = True
    band1[:, [5, 6]] = True
    band1[2, :] = False
    assert metric.confmat[0].sum().item() == band1.sum()  # 2 x 12 + 2 x 9 = 42
    assert metric.confmat[0].sum().item() == 42
    # width 2: rows 0-4 but the void row, columns 4-7
    band2 = np.zeros((12, 12), bool)
    band2[[0, 1, 3, 4], :] = True
    band2[:, 4:8] = True
    band2[2, :] = False
    assert metric.confmat[1].sum().item() == band2.sum()


def test_an_image_without_void_has_no_deeplab_band_but_its_label_changes_do():
    target = random_maps(3, n=1, size=(40, 40))[0]  # Cityscapes-like: no void
    assert not deeplab_band(target, 4).any()
    metric = TrimapIoU(4, widths=(1, 4))
    metric.update(torch.from_numpy(target)[None], torch.from_numpy(target)[None])
    assert metric.confmat[0].sum().item() == change_band(target, 1).sum() > 0
    assert metric.confmat[1].sum().item() == change_band(target, 4).sum()
