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
from pathlib import Path
from typing import Sequence

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
        return dy ** 2 + dx ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dy) <= r * 0.8) & (np.abs(dx) <= r * 0.8)
    if shape == "triangle":
        return (dy <= r * 0.7) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "ring":
        dist = np.sqrt(dy ** 2 + dx ** 2)
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
            image[y0:y0 + rng.integers(1, 3), max(0, x0 - 20):x0 + 20] = shade
        else:
            image[y0:y0 + rng.integers(4, 12), x0:x0 + rng.integers(4, 12)] = shade
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


def _save_palette_png(mask: np.ndarray, path: Path) -> None:
    image = Image.fromarray(mask, mode="P")
    image.putpalette(voc_palette().flatten().tolist())
    image.save(path)


def _save_sbd_mat(mask: np.ndarray, path: Path) -> None:
    """SBD's cls/<id>.mat: a struct GTcls with Segmentation, Boundaries and CategoriesPresent."""
    from scipy.io import savemat

    present = np.unique(mask[(mask > 0) & (mask < 255)]).astype(np.uint8)
    savemat(str(path), {"GTcls": {"Segmentation": mask.astype(np.uint8), "Boundaries": np.empty((0, 0)),
                                  "CategoriesPresent": present}})


def _voc_ids(count: int, offset: int) -> list[str]:
    return [f"{2007 + (offset + i) % 5}_{offset + i:06d}" for i in range(count)]


def make_voc(root, n_train: int = 40, n_val: int = 12, size: tuple[int, int] = (96, 128), seed: int = 0,
             n_sbd: int = 0) -> Path:
    """Write a mini VOC 2012 (and, with ``n_sbd > 0``, SBD) in the official layouts under ``root``.

    SBD's train list includes half of the VOC val ids (as the real SBD does) plus ``n_sbd`` ids of its own, so
    "trainaug" must exclude them. Returns ``root``.
    """
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
        image, mask = render_voc_scene(rng, size)
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
_CITY_LABELS = {"road": 7, "sidewalk": 8, "building": 11, "pole": 17, "vegetation": 21, "sky": 23, "person": 24,
                "car": 26, "unlabeled": 0, "static": 4}


def render_city_scene(rng, size):
    """A street-like labelId mask (sky, buildings, road, sidewalk, trees, cars, people, poles) and its image."""
    from cityscapesscripts.helpers.labels import id2label

    height, width = size
    label = np.full((height, width), _CITY_LABELS["building"], dtype=np.uint8)
    horizon = int(height * rng.uniform(0.25, 0.4))
    label[:horizon] = _CITY_LABELS["sky"]
    road_top = int(height * rng.uniform(0.55, 0.7))
    label[road_top:] = _CITY_LABELS["road"]
    label[road_top:road_top + max(2, height // 16)] = _CITY_LABELS["sidewalk"]
    for _ in range(rng.integers(1, 3)):
        x0, w = rng.integers(0, width - 10), rng.integers(8, width // 4)
        label[horizon - rng.integers(0, horizon // 2 + 1):road_top, x0:x0 + w] = _CITY_LABELS["vegetation"]
    for _ in range(rng.integers(1, 4)):
        x0 = rng.integers(0, width - 4)
        label[horizon:road_top + 2, x0:x0 + 2] = _CITY_LABELS["pole"]
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.integers(0, width - 20), rng.integers(road_top, height - 6)
        label[y0:y0 + 6, x0:x0 + 18] = _CITY_LABELS["car"]
    for _ in range(rng.integers(0, 3)):
        x0, y0 = rng.integers(0, width - 4), rng.integers(road_top - 10, height - 10)
        label[y0:y0 + 10, x0:x0 + 3] = _CITY_LABELS["person"]
    label[-2:, :] = _CITY_LABELS["unlabeled"]  # the ego vehicle's border
    colours = np.zeros((256, 3), dtype=np.float32)
    for label_id in np.unique(label):
        colours[label_id] = id2label[int(label_id)].color
    image = np.clip(colours[label] + rng.normal(0, 10, size=(height, width, 3)), 0, 255).astype(np.uint8)
    return image, label


def make_cityscapes(root, n_train: int = 6, n_val: int = 3, size: tuple[int, int] = (64, 128), seed: int = 0,
                    train_ids: bool = False) -> Path:
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
                label[y0:y0 + rng.integers(8, height // 2), x0:x0 + rng.integers(8, width // 2)] = cls
            image = np.clip(colours[label] + rng.normal(0, 10, size=(height, width, 3)), 0, 255).astype(np.uint8)
            stem = f"{prefix}_{i + 1:08d}"
            Image.fromarray(image).save(base / "images" / split / f"{stem}.jpg", quality=95)
            Image.fromarray(label, mode="L").save(base / "annotations" / split / f"{stem}.png")
    rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i + 1}\t0.0\t0\t0\t{name}" for i, name in enumerate(ADE20K_CLASSES)]
    (base / "objectInfo150.txt").write_text("\n".join(rows) + "\n")
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a small dataset in its official layout.")
    parser.add_argument("dataset", choices=("voc", "cityscapes", "ade20k"))
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=12)
    parser.add_argument("--sbd", type=int, default=0, help="VOC only: extra SBD-only images (trainaug)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="image size (default: voc 96 128, cityscapes 64 128, ade20k 72 96)")
    args = parser.parse_args(argv)
    if args.size is not None and min(args.size) < 16:
        parser.error(f"--size {args.size[0]} {args.size[1]}: images need at least 16 pixels per side")
    size = {} if args.size is None else {"size": tuple(args.size)}
    if args.dataset == "voc":
        make_voc(args.root, args.train, args.val, seed=args.seed, n_sbd=args.sbd, **size)
    elif args.dataset == "cityscapes":
        make_cityscapes(args.root, args.train, args.val, seed=args.seed, **size)
    else:
        make_ade20k(args.root, args.train, args.val, seed=args.seed, **size)
    print(f"wrote {args.dataset} to {args.root}")


if __name__ == "__main__":
    main()
