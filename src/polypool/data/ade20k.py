"""ADE20K SceneParsing (ADEChallengeData2016), 150 classes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from .base import SegmentationDataModule
from .classes import ADE20K_CLASSES, IGNORE_INDEX, ade20k_palette
from .dataset import DatasetError, SegmentationDataset, pair_by_stem, require_dir
from .download import download_or_explain

ADE20K_URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
ADE20K_LAYOUT = """  <root>/ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
  <root>/ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   (grey PNG: 0 = other, 1..150)"""


def ade20k_label_map() -> np.ndarray:
    """Label 0 ("other") -> 255 (ignored), k -> k - 1."""
    table = np.arange(-1, 255, dtype=np.int64)
    table[0] = IGNORE_INDEX
    return table.astype(np.uint8)


class ADE20KDataModule(SegmentationDataModule):
    """ADE20K SceneParsing from ``ADEChallengeData2016.zip``: 150 classes (names from objectInfo150)."""

    dataset_name = "ade20k"
    num_classes = 150
    class_names = ADE20K_CLASSES
    palette = ade20k_palette()

    def __init__(
        self,
        root: Union[str, Path] = "data/ade20k",
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: Union[int, tuple[int, int]] = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        mean: Optional[tuple[float, float, float]] = None,
        std: Optional[tuple[float, float, float]] = None,
        train_split: str = "training",
        val_split: str = "validation",
        val_batch_size: int = 1,
        check_labels: bool = True,
        download: bool = False,
        hflip: bool = True,
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
        self.base = self.root / "ADEChallengeData2016"

    def download_dataset(self) -> None:
        if not self.base.is_dir():
            download_or_explain(ADE20K_URL, self.root, self.base, "ADE20K")

    def check_layout(self) -> None:
        require_dir(self.root, "ADE20K root", ADE20K_LAYOUT)
        for split in (self.train_split, self.val_split):
            for top in ("images", "annotations"):
                require_dir(
                    self.base / top / split,
                    f"ADE20K folder {top}/{split}",
                    ADE20K_LAYOUT + f"\nor pass download=True ({ADE20K_URL})",
                )

    def make_dataset(self, split: str, train: bool) -> SegmentationDataset:
        self.check_layout()
        image_dir, mask_dir = self.base / "images" / split, self.base / "annotations" / split
        images = {p.stem: p for p in image_dir.glob("*.jpg")}
        masks = {p.stem: p for p in mask_dir.glob("*.png")}
        if not images and not masks:
            raise DatasetError(f"no images in {image_dir}. Expected layout:\n{ADE20K_LAYOUT}")
        pairs = pair_by_stem(images, masks, image_dir, mask_dir)
        transform = self.train_transform() if train else self.val_transform()
        return SegmentationDataset(
            pairs, self.num_classes, transform, label_map=ade20k_label_map(), check_labels=self.check_labels
        )
