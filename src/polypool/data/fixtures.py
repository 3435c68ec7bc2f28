"""Small datasets generated in exactly the official on-disk layouts, for tests and ``reproduce.sh --quick``.

The real DataModules read them with no special casing: same folders, file names, file formats (JPEG images,
palette PNG masks with 255 boundaries for VOC, SBD ``.mat`` files, grey labelId PNGs for Cityscapes, grey 0..150
PNGs for ADE20K) and split files.

The VOC set is *learnable*: each of the 20 classes has its own colour and shape (and the second ten a stripe
texture), drawn over a cluttered, noisy background, and some classes are thin or small structures (bars, rings,
crosses, dot clusters), where detail-sensitive pooling can matter.

    python -m polypool.data.fixtures voc data/voc_mini --train 120 --val 40
"""

from __future__ import annotations

import argparse
import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .classes import ADE20K_CLASSES, IGNORE_INDEX, voc_palette

SHAPES = ("disk", "square", "triangle", "ring", "hbar", "vbar", "cross", "dots", "diamond", "ellipse")


def _class_colours(num: int) -> np.ndarray:
    """Distinct, saturated colours: hues spread around the circle, alternating brightness."""
    colours = [colorsys.hsv_to_rgb(i / num, 0.85, 0.95 if i % 2 else 0.7) for i in range(num)]
    return (np.array(colours) * 255).astype(np.uint8)


VOC_COLOURS = _class_colours(20)


def _shape_mask(shape: str, height: int, width: int, cy: float, cx: float, r: float, rng) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    thin = max(1.5, r * 0.12)
    if shape == "disk":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if shape == "triangle":
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "ring":
        dist = np.sqrt(dy**2 + dx**2)
        return (dist <= r) & (dist >= r - 2 * thin)
    if shape == "hbar":
        return (np.abs(dy) <= thin) & (np.abs(dx) <= r * 1.3)
    if shape == "vbar":
        return (np.abs(dx) <= thin) & (np.abs(dy) <= r * 1.3)
    if shape == "cross":
        return ((np.abs(dy) <= thin) | (np.abs(dx) <= thin)) & (np.abs(dy) <= r) & (np.abs(dx) <= r)
    if shape == "dots":
        mask = np.zeros((height, width), dtype=bool)
        for _ in range(5):
            oy, ox = rng.uniform(-r, r, size=2)
            mask |= (dy - oy) ** 2 + (dx - ox) ** 2 <= (r * 0.22) ** 2
        return mask
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "ellipse":
        return (dy / (r * 0.5)) ** 2 + (dx / r) ** 2 <= 1
    raise ValueError(shape)


def render_voc_scene(rng: np.random.Generator, size: tuple[int, int], max_objects: int = 3):
    """An RGB image and its class mask (0 = background, 1..20 the objects), without boundaries."""
    height, width = size
    grey = rng.uniform(70, 170)
    image = np.clip(rng.normal(grey, 18, size=(height, width, 3)), 0, 255)
    for _ in range(rng.integers(2, 6)):  # clutter: background lines and boxes of random grey
        shade = rng.uniform(40, 210)
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        if rng.random() < 0.5:
            image[y0 : y0 + rng.integers(1, 3), max(0, x0 - 20) : x0 + 20] = shade
        else:
            image[y0 : y0 + rng.integers(4, 12), x0 : x0 + rng.integers(4, 12)] = shade
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(rng.integers(1, max_objects + 1)):
        cls = int(rng.integers(1, 21))
        r = rng.uniform(0.12, 0.26) * min(height, width)
        cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
        region = _shape_mask(SHAPES[(cls - 1) % 10], height, width, cy, cx, r, rng)
        colour = VOC_COLOURS[cls - 1].astype(np.float32) * rng.uniform(0.85, 1.15)
        texture = np.ones((height, width, 1), dtype=np.float32)
        if cls > 10:  # the second ten: the same shapes, with stripes
            texture = (0.65 + 0.35 * ((np.arange(width) // 3) % 2))[None, :, None].astype(np.float32)
            texture = np.broadcast_to(texture, (height, width, 1))
        painted = np.clip(colour * texture + rng.normal(0, 8, size=(height, width, 3)), 0, 255)
        image[region] = painted[region]
        mask[region] = cls
    return image.astype(np.uint8), mask


# --- the detail-heavy VOC set (``reproduce.sh --quick``) ---------------------------------------------------------
# Six VOC classes drawn as structures whose details decide the IoU: 1-3 px frames, legs, masts, wires and stems, birds
# of a few pixels, and thick bodies that touch them, over textured backgrounds. Each class keeps its own colour (with
# jitter), so a small network can tell them apart in minutes; what it cannot do without detail is find their pixels.
DETAIL_CLASSES = {"bicycle": 2, "bird": 3, "boat": 4, "chair": 9, "person": 15, "pottedplant": 16}
DETAIL_COLOURS = {
    2: (230, 40, 40),
    3: (250, 220, 30),
    4: (40, 90, 240),
    9: (150, 60, 220),
    15: (240, 140, 30),
    16: (30, 200, 60),
}


def _segment(yy: np.ndarray, xx: np.ndarray, p0, p1, width: float) -> np.ndarray:
    """Pixels whose centre lies within ``width / 2`` of the segment p0-p1 (points as (y, x))."""
    (y0, x0), (y1, x1) = p0, p1
    dy, dx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(dy * dy + dx * dx, 1e-9), 0, 1)
    return (yy - y0 - t * dy) ** 2 + (xx - x0 - t * dx) ** 2 <= (width / 2 + 0.15) ** 2


def _ring(yy, xx, cy, cx, r, width):
    return np.abs(np.hypot(yy - cy, xx - cx) - r) <= width / 2 + 0.15


def _detail_object(cls: int, yy, xx, rng, height: int, width: int) -> np.ndarray:
    """The mask of one object of VOC class ``cls``, at a random place and size. Sizes scale with the image (they
    are given for 64 px); strokes stay 1-3 px wide."""
    thin = lambda: float(rng.choice([1.0, 2.0, 3.0]))
    k = min(height, width) / 64
    u = lambda low, high: k * rng.uniform(low, high)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    if cls == 2:  # bicycle: two wheels and a frame of 2-3 px strokes
        r, w = u(4, 8), float(rng.choice([2.0, 3.0]))
        a, b = (cy, cx - 1.6 * r), (cy, cx + 1.6 * r)
        top = (cy - 1.3 * r, cx)
        mask = _ring(yy, xx, *a, r, w) | _ring(yy, xx, *b, r, w)
        for p, q in ((a, top), (top, b), (a, (cy, cx)), ((cy, cx), top), ((cy, cx), b)):
            mask |= _segment(yy, xx, p, q, w)
        return mask
    if cls == 3:  # birds: a flock of 2-6 blobs of a few pixels
        mask = np.zeros_like(yy, dtype=bool)
        for _ in range(rng.integers(2, 7)):
            oy, ox = cy + u(-10, 10), cx + u(-10, 10)
            mask |= ((yy - oy) / u(0.8, 2.2)) ** 2 + ((xx - ox) / u(0.8, 3.0)) ** 2 <= 1
        return mask
    if cls == 4:  # boat: a hull, a 1-2 px mast and 1 px stays
        hw, hh = u(6, 14), u(2.5, 5)
        hull = (np.abs(yy - cy) <= hh) & (np.abs(xx - cx) <= hw - (yy - cy + hh) * 0.8)
        mast_top = (cy - u(10, 22), cx)
        mask = hull | _segment(yy, xx, (cy, cx), mast_top, float(rng.choice([1.0, 2.0])))
        mask |= _segment(yy, xx, mast_top, (cy - hh, cx + hw * 0.9), 1.0)
        mask |= _segment(yy, xx, mast_top, (cy - hh, cx - hw * 0.9), 1.0)
        return mask
    if cls == 9:  # chair: a seat and back of 3-4 px, four legs of 1-3 px
        s, w = u(5, 10), thin()
        mask = _segment(yy, xx, (cy, cx - s), (cy, cx + s), w + 1.0)
        mask |= _segment(yy, xx, (cy, cx + s), (cy - 1.4 * s, cx + s), w + 1.0)
        for fx in (-s, -s / 3, s / 3, s):
            mask |= _segment(yy, xx, (cy, cx + fx), (cy + 1.3 * s, cx + fx * 1.1), w)
        return mask
    if cls == 15:  # person: a thick body and head (the large objects, which the thin ones touch)
        h = u(9, 18)
        body = ((yy - cy) / h) ** 2 + ((xx - cx) / (h * 0.35)) ** 2 <= 1
        return body | (np.hypot(yy - (cy - 1.25 * h), xx - cx) <= h * 0.3)
    if cls == 16:  # potted plant: a pot and 1 px stems with small leaves
        pw = u(3, 6)
        mask = (yy >= cy) & (yy <= cy + 1.6 * pw) & (np.abs(xx - cx) <= pw - (yy - cy) * 0.3)
        for _ in range(rng.integers(2, 5)):
            tip = (cy - u(6, 16), cx + u(-9, 9))
            mask |= _segment(yy, xx, (cy, cx), tip, 1.0)
            mask |= np.hypot(yy - tip[0], xx - tip[1]) <= u(1.0, 2.5)
        return mask
    raise ValueError(f"no detail drawing for VOC class {cls}")


def _textured_background(rng, height: int, width: int) -> np.ndarray:
    """Grey-ish gratings, checks and noise at random frequencies: texture that a pooling must not mistake for
    an object (no saturated colour, which the objects own)."""
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    base = rng.uniform(80, 170)
    image = np.full((height, width), base, dtype=np.float32)
    for _ in range(rng.integers(1, 3)):
        angle, period = rng.uniform(0, np.pi), rng.uniform(2.5, 12)
        phase = (np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period
        image += rng.uniform(10, 35) * np.sign(np.sin(phase + rng.uniform(0, 6.3)))
    image = image[..., None] * rng.uniform(0.9, 1.1, size=3)[None, None]  # a faint tint
    return image + rng.normal(0, 10, size=(height, width, 3))


def render_detail_scene(rng: np.random.Generator, size: tuple[int, int], max_objects: int = 6):
    """An RGB image and its class mask (0 = background, :data:`DETAIL_CLASSES` ids) of the detail-heavy set."""
    height, width = size
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    image = _textured_background(rng, height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    ids = list(DETAIL_CLASSES.values())
    for _ in range(rng.integers(3, max_objects + 1)):
        cls = int(rng.choice(ids))
        region = _detail_object(cls, yy, xx, rng, height, width)
        colour = np.array(DETAIL_COLOURS[cls], dtype=np.float32) * rng.uniform(0.8, 1.1)
        if rng.random() < 0.4:  # some objects carry a texture of their own
            colour = colour * (0.75 + 0.25 * ((xx + yy) // 2 % 2))[..., None]
        painted = colour + rng.normal(0, 8, size=(height, width, 3))
        image[region] = painted[region]
        mask[region] = cls
    return np.clip(image, 0, 255).astype(np.uint8), mask


def add_voc_boundaries(mask: np.ndarray) -> np.ndarray:
    """VOC marks a band around each object as 255 ("difficult"); here a 1-pixel band outside each object."""
    out = mask.copy()
    for cls in np.unique(mask):
        if cls == 0:
            continue
        region = mask == cls
        band = ndimage.binary_dilation(region) & ~region
        out[band & (mask != cls)] = IGNORE_INDEX
    return out


VOC_STYLES = {"shapes": render_voc_scene, "detail": render_detail_scene}


def _save_palette_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette().flatten().tolist())
    image.save(path)


def _save_sbd_mat(mask: np.ndarray, path: Path) -> None:
    """SBD's cls/<id>.mat: a struct GTcls with Segmentation, Boundaries and CategoriesPresent."""
    from scipy.io import savemat

    present = np.unique(mask[(mask > 0) & (mask < 255)]).astype(np.uint8)
    savemat(
        str(path),
        {
            "GTcls": {
                "Segmentation": mask.astype(np.uint8),
                "Boundaries": np.empty((0, 0)),
                "CategoriesPresent": present,
            }
        },
    )


def _voc_ids(count: int, offset: int) -> list[str]:
    return [f"{2007 + (offset + i) % 5}_{offset + i:06d}" for i in range(count)]


def make_voc(
    root,
    n_train: int = 40,
    n_val: int = 12,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    n_sbd: int = 0,
    style: str = "shapes",
) -> Path:
    """Write a mini VOC 2012 (and, with ``n_sbd > 0``, SBD) in the official layouts under ``root``.

    ``style`` is "shapes" (the 20 classes as coloured shapes, :func:`render_voc_scene`) or "detail" (six classes
    drawn as thin, small and touching structures over textures, :func:`render_detail_scene`).

    SBD's train list includes half of the VOC val ids (as the real SBD does) plus ``n_sbd`` ids of its own, so
    "trainaug" must exclude them. Returns ``root``.
    """
    if style not in VOC_STYLES:
        raise ValueError(f"style must be one of {sorted(VOC_STYLES)}, got {style!r}")
    render = VOC_STYLES[style]
    root = Path(root)
    rng = np.random.default_rng(seed)
    voc, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation"):
        folder.mkdir(parents=True, exist_ok=True)
    if n_sbd:
        (sbd / "cls").mkdir(parents=True, exist_ok=True)
        (sbd / "img").mkdir(parents=True, exist_ok=True)
    train_ids, val_ids = _voc_ids(n_train, 0), _voc_ids(n_val, n_train)
    sbd_ids = _voc_ids(n_sbd, n_train + n_val)
    for image_id in train_ids + val_ids + sbd_ids:
        image, mask = render(rng, size)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        if image_id not in sbd_ids:  # VOC's own masks: palette PNGs with boundaries
            _save_palette_png(add_voc_boundaries(mask), voc / "SegmentationClass" / f"{image_id}.png")
        if n_sbd:  # SBD annotates its own images and many VOC ones, without boundaries
            Image.fromarray(image).save(sbd / "img" / f"{image_id}.jpg", quality=95)
            _save_sbd_mat(mask, sbd / "cls" / f"{image_id}.mat")
    split_dir = voc / "ImageSets" / "Segmentation"
    (split_dir / "train.txt").write_text("\n".join(train_ids) + "\n")
    (split_dir / "val.txt").write_text("\n".join(val_ids) + "\n")
    (split_dir / "trainval.txt").write_text("\n".join(train_ids + val_ids) + "\n")
    if n_sbd:  # like the real SBD, its train split overlaps VOC val
        half = len(sbd_ids) // 2 + 1
        (sbd / "train.txt").write_text("\n".join(sbd_ids[:half] + val_ids[: len(val_ids) // 2] + train_ids[:3]) + "\n")
        (sbd / "val.txt").write_text("\n".join(sbd_ids[half:]) + "\n")
    return root


# --- Cityscapes ----------------------------------------------------------------------------------------------------

# (labelId, colour) of the stuff and things drawn; 0 (unlabeled) and 4 (static) stay 255 after the mapping.
_CITY_LABELS = {
    "road": 7,
    "sidewalk": 8,
    "building": 11,
    "pole": 17,
    "vegetation": 21,
    "sky": 23,
    "person": 24,
    "car": 26,
    "unlabeled": 0,
    "static": 4,
}


def render_city_scene(rng, size):
    """A street-like labelId mask (sky, buildings, road, sidewalk, trees, cars, people, poles) and its image."""
    from cityscapesscripts.helpers.labels import id2label

    height, width = size
    label = np.full((height, width), _CITY_LABELS["building"], dtype=np.uint8)
    horizon = int(height * rng.uniform(0.25, 0.4))
    label[:horizon] = _CITY_LABELS["sky"]
    road_top = int(height * rng.uniform(0.55, 0.7))
    label[road_top:] = _CITY_LABELS["road"]
    label[road_top : road_top + max(2, height // 16)] = _CITY_LABELS["sidewalk"]
    for _ in range(rng.integers(1, 3)):
        x0, w = rng.integers(0, width - 10), rng.integers(8, width // 4)
        label[horizon - rng.integers(0, horizon // 2 + 1) : road_top, x0 : x0 + w] = _CITY_LABELS["vegetation"]
    for _ in range(rng.integers(1, 4)):
        x0 = rng.integers(0, width - 4)
        label[horizon : road_top + 2, x0 : x0 + 2] = _CITY_LABELS["pole"]
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.integers(0, width - 20), rng.integers(road_top, height - 6)
        label[y0 : y0 + 6, x0 : x0 + 18] = _CITY_LABELS["car"]
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.integers(0, width - 4), rng.integers(road_top - 10, height - 10)
        label[y0 : y0 + 10, x0 : x0 + 3] = _CITY_LABELS["person"]
    label[-2:, :] = _CITY_LABELS["unlabeled"]  # the ego vehicle's border
    colours = np.zeros((256, 3), dtype=np.float32)
    for label_id in np.unique(label):
        colours[label_id] = id2label[int(label_id)].color
    image = np.clip(colours[label] + rng.normal(0, 10, size=(height, width, 3)), 0, 255).astype(np.uint8)
    return image, label


def make_cityscapes(
    root, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (64, 128), seed: int = 0, train_ids: bool = False
) -> Path:
    """Write a mini Cityscapes (leftImg8bit + gtFine, labelIds and colour PNGs; ``train_ids`` adds the
    ``*_labelTrainIds.png`` that cityscapesscripts' createTrainIdLabelImgs makes). Returns ``root``."""
    from cityscapesscripts.helpers.labels import id2label

    from .classes import cityscapes_label_to_train_id

    root = Path(root)
    rng = np.random.default_rng(seed)
    to_train_id = cityscapes_label_to_train_id()
    for split, count, cities in (("train", n_train, ("aachen", "bochum")), ("val", n_val, ("frankfurt",))):
        for i in range(count):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_{19 + i:06d}"
            image_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            image, label = render_city_scene(rng, size)
            Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label, mode="L").save(gt_dir / f"{stem}_gtFine_labelIds.png")
            colour = np.array([id2label[int(v)].color for v in range(34)], dtype=np.uint8)[label]
            Image.fromarray(colour).save(gt_dir / f"{stem}_gtFine_color.png")
            if train_ids:
                Image.fromarray(to_train_id[label], mode="L").save(gt_dir / f"{stem}_gtFine_labelTrainIds.png")
    return root


# --- ADE20K --------------------------------------------------------------------------------------------------------


def make_ade20k(root, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (72, 96), seed: int = 0) -> Path:
    """Write a mini ADEChallengeData2016 (JPEG images, grey PNG annotations 0..150, objectInfo150.txt)."""
    root = Path(root)
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(151, 3))
    for split, prefix, count in (("training", "ADE_train", n_train), ("validation", "ADE_val", n_val)):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            height, width = size
            label = np.zeros((height, width), dtype=np.uint8)  # 0 = "other", ignored
            for _ in range(rng.integers(2, 6)):
                cls = int(rng.integers(1, 151))
                y0, x0 = rng.integers(0, height - 8), rng.integers(0, width - 8)
                label[y0 : y0 + rng.integers(8, height // 2), x0 : x0 + rng.integers(8, width // 2)] = cls
            image = np.clip(colours[label] + rng.normal(0, 10, size=(height, width, 3)), 0, 255).astype(np.uint8)
            stem = f"{prefix}_{i + 1:08d}"
            Image.fromarray(image).save(base / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(base / "annotations" / split / f"{stem}.png")
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i + 1}\t0.0\t0\t0\t{name}" for i, name in enumerate(ADE20K_CLASSES)]
    (base / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    return root


def _label_boundary(target):
    """Pixels of a label map (N, H, W) whose 3x3 neighbourhood holds another label (the image edge does not)."""
    import torch.nn.functional as F

    t = target[:, None].float()
    high = F.max_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    low = -F.max_pool2d(F.pad(-t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (high != low)[:, 0]


def voc_statistics(root, split: str = "val", near: int = 4) -> dict:
    """Statistics of a VOC-layout set's masks (``split``): per class the pixel share and the sizes of its
    objects (connected regions, in pixels), and the share of labelled pixels within ``near`` px of a boundary
    between labels (the void band counted as the object it surrounds)."""
    import torch

    from ..metrics import dilate
    from .classes import VOC_CLASSES
    from .voc import read_mask

    base = Path(root) / "VOCdevkit" / "VOC2012"
    ids = (base / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    pixels, sizes, labelled, in_band = {}, {}, 0, 0
    for image_id in ids:
        mask = read_mask(base / "SegmentationClass" / f"{image_id}.png")
        valid = mask != IGNORE_INDEX
        # the boundary of the objects as drawn: 255 (VOC's boundary band) counts as the object it surrounds
        target = torch.from_numpy(np.where(valid, mask, 0).astype(np.int64))[None]
        band = dilate(_label_boundary(target), near)[0].numpy() & valid
        labelled, in_band = labelled + int(valid.sum()), in_band + int(band.sum())
        for cls in np.unique(mask[valid]):
            pixels[int(cls)] = pixels.get(int(cls), 0) + int((mask == cls).sum())
            if cls:
                regions, _count = ndimage.label(mask == cls, structure=np.ones((3, 3)))  # 8-connected
                sizes.setdefault(int(cls), []).extend(np.bincount(regions.ravel())[1:].tolist())
    classes = {
        VOC_CLASSES[c]: {
            "pixel_share": pixels[c] / labelled,
            "object_px": (
                {
                    "median": float(np.median(sizes[c])),
                    "min": int(min(sizes[c])),
                    "max": int(max(sizes[c])),
                    "count": len(sizes[c]),
                }
                if c in sizes
                else None
            ),
        }
        for c in sorted(pixels)
    }
    return {
        "split": split,
        "images": len(ids),
        "near_px": near,
        "near_boundary_share": in_band / labelled,
        "classes": classes,
    }


def format_statistics(stats: dict) -> str:
    """A markdown table of :func:`voc_statistics` (for the README)."""
    lines = [
        f"{stats['images']} {stats['split']} images; {100 * stats['near_boundary_share']:.1f}% of the labelled "
        f"pixels lie within {stats['near_px']} px of a boundary.",
        "",
        "| class | pixel share | regions (8-connected) | region size, px: median (min-max) |",
        "|---|---:|---:|---|",
    ]
    for name, c in stats["classes"].items():
        size = c["object_px"]
        lines.append(
            f"| {name} | {100 * c['pixel_share']:.1f}% | {size['count'] if size else '-'} | "
            + (f"{size['median']:.0f} ({size['min']}-{size['max']})" if size else "-")
            + " |"
        )
    return "\n".join(lines)


# Named VOC sets: "quick" is the set reproduce.sh --quick trains and evaluates on (README, "The CPU miniature").
PRESETS = {"quick": {"style": "detail", "train": 240, "val": 40, "size": [96, 96], "seed": 0, "sbd": 0}}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a small dataset in its official layout.")
    parser.add_argument("dataset", choices=("voc", "cityscapes", "ade20k"))
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=12)
    parser.add_argument("--sbd", type=int, default=0, help="VOC only: extra SBD-only images (trainaug)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--style",
        choices=sorted(VOC_STYLES),
        default="shapes",
        help="VOC only: 'shapes' (20 classes as coloured shapes) or 'detail' (thin, small and "
        "touching structures of six classes over textures)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="VOC only: a named set; 'quick' is reproduce.sh --quick's (overrides the options above)",
    )
    parser.add_argument(
        "--stats",
        action="store_true",
        help="VOC only: print the val set's statistics (object sizes, pixels near a boundary)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        help="image size (default: voc 96 128, cityscapes 64 128, ade20k 72 96)",
    )
    args = parser.parse_args(argv)
    if args.preset is not None:
        if args.dataset != "voc":
            parser.error(f"--preset {args.preset} is a VOC set")
        for key, value in PRESETS[args.preset].items():
            setattr(args, key, value)
    if args.size is not None and min(args.size) < 16:
        parser.error(f"--size {args.size[0]} {args.size[1]}: images need at least 16 pixels per side")
    size = {} if args.size is None else {"size": tuple(args.size)}
    if args.dataset == "voc":
        make_voc(args.root, args.train, args.val, seed=args.seed, n_sbd=args.sbd, style=args.style, **size)
    elif args.dataset == "cityscapes":
        make_cityscapes(args.root, args.train, args.val, seed=args.seed, **size)
    else:
        make_ade20k(args.root, args.train, args.val, seed=args.seed, **size)
    print(f"wrote {args.dataset} to {args.root}")
    if args.stats and args.dataset == "voc":
        print(format_statistics(voc_statistics(args.root)))


if __name__ == "__main__":
    main()
