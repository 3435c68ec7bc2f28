"""Cityscapes (gtFine), the 19 evaluation classes."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .base import SegmentationDataModule
from .classes import cityscapes_classes, cityscapes_label_to_train_id, cityscapes_palette
from .dataset import DatasetError, SegmentationDataset, load_image, pair_by_stem, require_dir

CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/"
CITYSCAPES_LAYOUT = """  <root>/leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
  <root>/gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png   (or _gtFine_labelTrainIds.png)"""
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = ("_gtFine_labelTrainIds.png", "_gtFine_labelIds.png")
OTHER_GT_SUFFIXES = ("_gtFine_color.png", "_gtFine_instanceIds.png", "_gtFine_polygons.json")


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes, read from the official layout (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``).

    Masks are ``*_gtFine_labelTrainIds.png`` where present (made by cityscapesscripts' ``createTrainIdLabelImgs``),
    else ``*_gtFine_labelIds.png`` mapped to the 19 trainIds with ``cityscapesscripts.helpers.labels``; every other
    label becomes 255. A file with any other suffix in these folders is an error (it would be silently skipped).
    Cityscapes needs a login to download, so ``download=True`` explains where to get it.
    """

    dataset_name = "cityscapes"
    num_classes = 19

    def __init__(
        self,
        root: Union[str, Path] = "data/cityscapes",
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: Union[int, tuple[int, int]] = 769,
        scale_range: tuple[float, float] = (0.5, 2.0),
        mean: Optional[tuple[float, float, float]] = None,
        std: Optional[tuple[float, float, float]] = None,
        train_split: str = "train",
        val_split: str = "val",
        val_batch_size: int = 1,
        check_labels: bool = True,
        download: bool = False,
        hflip: bool = True,
        prefer_train_ids: bool = True,
        allow_split_overlap: bool = False,
    ):
        super().__init__(
            root,
            batch_size,
            num_workers,
            crop_size,
            scale_range,
            mean,
            std,
            train_split,
            val_split,
            val_batch_size,
            check_labels,
            download,
            hflip,
            allow_split_overlap=allow_split_overlap,
        )
        self.prefer_train_ids = prefer_train_ids
        self.class_names = cityscapes_classes()
        self.palette = cityscapes_palette()

    def download_dataset(self) -> None:
        if not (self.root / "leftImg8bit").is_dir():
            raise DatasetError(
                f"Cityscapes cannot be downloaded without an account: log in at {CITYSCAPES_URL} "
                f"(or use cityscapesscripts' csDownload), fetch leftImg8bit_trainvaltest.zip and "
                f"gtFine_trainvaltest.zip and extract both into {self.root}. Expected layout:\n"
                f"{CITYSCAPES_LAYOUT}"
            )

    def check_layout(self) -> None:
        require_dir(self.root, "Cityscapes root", CITYSCAPES_LAYOUT)
        for split in (self.train_split, self.val_split):
            for top in ("leftImg8bit", "gtFine"):
                require_dir(
                    self.root / top / split,
                    f"Cityscapes folder {top}/{split}",
                    CITYSCAPES_LAYOUT + f"\n(download: {CITYSCAPES_URL})",
                )

    def _scan(self, split: str) -> list[tuple[Path, Path]]:
        image_dir, label_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        images, labels = {}, {}
        for path in sorted(image_dir.rglob("*")):
            if path.is_file():
                if not path.name.endswith(IMAGE_SUFFIX):
                    raise DatasetError(
                        f"{path} does not end with {IMAGE_SUFFIX!r}: Cityscapes images are named "
                        f"<city>_<seq>_<frame>{IMAGE_SUFFIX}; rename or remove it"
                    )
                images[str(path.relative_to(image_dir))[: -len(IMAGE_SUFFIX)]] = path
        suffixes = LABEL_SUFFIXES if self.prefer_train_ids else LABEL_SUFFIXES[::-1]
        for path in sorted(label_dir.rglob("*")):
            if not path.is_file():
                continue
            suffix = next((s for s in LABEL_SUFFIXES + OTHER_GT_SUFFIXES if path.name.endswith(s)), None)
            if suffix is None:
                raise DatasetError(
                    f"{path} has an unknown suffix: gtFine files end with one of "
                    f"{LABEL_SUFFIXES + OTHER_GT_SUFFIXES}; rename or remove it"
                )
            if suffix in LABEL_SUFFIXES:
                key = str(path.relative_to(label_dir))[: -len(suffix)]
                current = labels.get(key)
                if current is None or suffixes.index(suffix) < suffixes.index(_label_suffix(current)):
                    labels[key] = path
        return pair_by_stem(images, labels, image_dir, label_dir)

    def make_dataset(self, split: str, train: bool) -> SegmentationDataset:
        self.check_layout()
        pairs = self._scan(split)
        if not pairs:
            raise DatasetError(
                f"no images in {self.root / 'leftImg8bit' / split}. Expected layout:\n{CITYSCAPES_LAYOUT}"
            )
        transform = self.train_transform() if train else self.val_transform()
        reader = partial(read_cityscapes_mask, to_train_id=cityscapes_label_to_train_id())
        return SegmentationDataset(
            pairs, self.num_classes, transform, check_labels=self.check_labels, mask_reader=reader
        )


def _label_suffix(path: Path) -> str:
    return next(s for s in LABEL_SUFFIXES if path.name.endswith(s))


def read_cityscapes_mask(path: Path, to_train_id: np.ndarray) -> np.ndarray:
    """trainIds from a ``*_labelTrainIds.png`` as they are, from a ``*_labelIds.png`` through the lookup table."""
    mask = np.asarray(load_image(path))
    return mask if path.name.endswith("_gtFine_labelTrainIds.png") else to_train_id[mask]
