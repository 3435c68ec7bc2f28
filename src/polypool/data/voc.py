"""PASCAL VOC 2012 segmentation, optionally with the SBD "trainaug" augmentation (10,582 training images)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from .base import SegmentationDataModule
from .classes import VOC_CLASSES, voc_palette
from .dataset import DatasetError, SegmentationDataset, read_label_png, read_split_file, require_dir
from .download import download_or_explain

VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SBD_URL = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"

VOC_LAYOUT = """  <root>/VOCdevkit/VOC2012/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png          (palette PNG: values 0..20, 255 on object boundaries)
      ImageSets/Segmentation/{train,val}.txt
  optional, for train_split="trainaug":
      VOCdevkit/VOC2012/SegmentationClassAug/<id>.png   (label PNGs), or
      <root>/benchmark_RELEASE/dataset/{cls/<id>.mat, train.txt, val.txt}   (SBD, as released)"""


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class mask of an SBD ``cls/*.mat`` file (``GTcls.Segmentation``, as torchvision's SBDataset reads it)."""
    from scipy.io import loadmat

    try:
        return loadmat(str(path))["GTcls"][0]["Segmentation"][0].astype(np.uint8)
    except Exception as error:
        raise DatasetError(
            f"cannot read the SBD mask {path} ({type(error).__name__}: {error}); re-extract benchmark.tgz"
        ) from error


def read_mask(path: Path) -> np.ndarray:
    return read_sbd_mat(path) if path.suffix == ".mat" else read_label_png(path)


class VOCSegmentationDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 (21 classes), read from the official devkit layout.

    ``train_split="trainaug"`` trains on the usual 10,582 images: VOC train plus SBD train and val, **minus VOC
    val** (SBD's train split overlaps VOC val, which would leak the evaluation images into training). Each image
    takes the VOC mask when VOC has one, else ``SegmentationClassAug/<id>.png`` when that folder exists, else SBD's
    ``cls/<id>.mat``.

    ``download=True`` fetches the VOC tar (and SBD for trainaug) like torchvision; without network it fails with
    the folder and the URL to fetch by hand.
    """

    dataset_name = "voc"
    num_classes = 21
    class_names = VOC_CLASSES
    palette = voc_palette()

    def __init__(
        self,
        root: Union[str, Path] = "data/voc",
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: Union[int, tuple[int, int]] = 321,
        scale_range: tuple[float, float] = (0.5, 2.0),
        mean: Optional[tuple[float, float, float]] = None,
        std: Optional[tuple[float, float, float]] = None,
        train_split: str = "train",
        val_split: str = "val",
        val_batch_size: int = 1,
        check_labels: bool = True,
        download: bool = False,
        hflip: bool = True,
        sbd_root: Optional[Union[str, Path]] = None,
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
        self.voc_dir = self.root / "VOCdevkit" / "VOC2012"
        self.sbd_dir = Path(sbd_root).expanduser() if sbd_root else self.root / "benchmark_RELEASE" / "dataset"

    def download_dataset(self) -> None:
        if not self.voc_dir.is_dir():
            download_or_explain(VOC_URL, self.root, self.voc_dir, "VOC 2012")
        if "trainaug" in (self.train_split, self.val_split) and not self._has_augmentation():
            download_or_explain(SBD_URL, self.root, self.sbd_dir, "SBD (for trainaug)")

    def _has_augmentation(self) -> bool:
        return (self.voc_dir / "SegmentationClassAug").is_dir() or (self.sbd_dir / "cls").is_dir()

    def check_layout(self) -> None:
        require_dir(self.root, "VOC root", VOC_LAYOUT)
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            require_dir(self.voc_dir / sub, f"VOC folder {sub}", VOC_LAYOUT + f"\nor pass download=True ({VOC_URL})")
        for split in (self.train_split, self.val_split):
            if split == "trainaug":
                if not self._has_augmentation():
                    raise DatasetError(
                        f"train_split='trainaug' needs SBD at {self.sbd_dir} or "
                        f"{self.voc_dir / 'SegmentationClassAug'}. Expected layout:\n{VOC_LAYOUT}\n"
                        f"SBD: {SBD_URL} (or download=True)"
                    )
            else:
                read_split_file(self.voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt", VOC_LAYOUT)

    def split_ids(self, split: str) -> list[str]:
        """The image ids of a split; "trainaug" is (VOC train + SBD train + SBD val) minus VOC val."""
        voc_split = lambda name: read_split_file(
            self.voc_dir / "ImageSets" / "Segmentation" / f"{name}.txt", VOC_LAYOUT
        )
        if split != "trainaug":
            return voc_split(split)
        ids = list(voc_split("train"))
        aug_dir = self.voc_dir / "SegmentationClassAug"
        if (self.sbd_dir / "cls").is_dir():
            for name in ("train", "val"):
                ids += read_split_file(self.sbd_dir / f"{name}.txt", VOC_LAYOUT, unique=False)  # merged below
        else:
            ids += [p.stem for p in sorted(aug_dir.glob("*.png"))]
        excluded = set(voc_split("val"))
        return sorted(set(ids) - excluded)  # a set: SBD lists many VOC train ids again, and VOC val is left out

    def mask_path(self, image_id: str) -> Path:
        for candidate in (
            self.voc_dir / "SegmentationClass" / f"{image_id}.png",
            self.voc_dir / "SegmentationClassAug" / f"{image_id}.png",
            self.sbd_dir / "cls" / f"{image_id}.mat",
        ):
            if candidate.is_file():
                return candidate
        raise DatasetError(
            f"no mask for image {image_id}: looked for {self.voc_dir / 'SegmentationClass'}/"
            f"{image_id}.png, SegmentationClassAug/{image_id}.png and {self.sbd_dir / 'cls'}/"
            f"{image_id}.mat; restore the mask or remove the id from the split file"
        )

    def make_dataset(self, split: str, train: bool) -> SegmentationDataset:
        self.check_layout()
        pairs = []
        for image_id in self.split_ids(split):
            image = self.voc_dir / "JPEGImages" / f"{image_id}.jpg"
            if not image.is_file():
                try:
                    mask = self.mask_path(image_id)
                except DatasetError:
                    raise DatasetError(
                        f"id {image_id} (listed in split {split!r}) has neither image ({image}) nor "
                        f"mask ({self.voc_dir / 'SegmentationClass' / f'{image_id}.png'}): remove the "
                        f"id from the split file, or restore both files"
                    ) from None
                raise DatasetError(
                    f"image {image} (listed in split {split!r}) does not exist, though its mask {mask} "
                    f"does: restore JPEGImages or remove the id from the split file"
                )
            pairs.append((image, self.mask_path(image_id)))
        transform = self.train_transform() if train else self.val_transform()
        return SegmentationDataset(
            pairs, self.num_classes, transform, mask_reader=read_mask, check_labels=self.check_labels
        )
