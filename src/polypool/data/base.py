"""What the three DataModules share: arguments, transforms, loaders and the dataset-level attributes."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Optional, Union

import lightning as L
from torch.utils.data import DataLoader

from .classes import IGNORE_INDEX
from .dataset import EpochSampler, ResumableLoader, SegmentationDataset
from .transforms import pad_collate, train_transform, val_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegmentationDataModule(L.LightningDataModule):
    """Base of the dataset modules. Subclasses set ``num_classes``, ``class_names``, ``palette`` and implement
    ``check_layout`` (fast, no download), ``download_dataset`` and ``make_dataset(split, transform)``.

    ``prepare_data`` only checks the folders (or downloads, when ``download=True``); ``setup`` builds the datasets,
    so the module is safe under DDP.
    """

    ignore_index = IGNORE_INDEX
    num_classes: int
    class_names: tuple[str, ...]

    def __init__(
        self,
        root: Union[str, Path],
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: Union[int, tuple[int, int]] = 321,
        scale_range: tuple[float, float] = (0.5, 2.0),
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        train_split: str = "train",
        val_split: str = "val",
        val_batch_size: int = 1,
        check_labels: bool = True,
        download: bool = False,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        self.batch_size, self.num_workers, self.val_batch_size = batch_size, num_workers, val_batch_size
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.scale_range, self.mean, self.std = tuple(scale_range), tuple(mean), tuple(std)
        self.train_split, self.val_split = train_split, val_split
        self.check_labels, self.download = check_labels, download
        self.train_dataset: Optional[SegmentationDataset] = None
        self.val_dataset: Optional[SegmentationDataset] = None

    # -- to implement --------------------------------------------------------------------------------------------
    def check_layout(self) -> None:
        raise NotImplementedError

    def download_dataset(self) -> None:
        raise NotImplementedError

    def make_dataset(self, split: str, train: bool) -> SegmentationDataset:
        raise NotImplementedError

    # -- Lightning -----------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.download:
            self.download_dataset()
        self.check_layout()

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self.make_dataset(self.train_split, train=True)
            # the seed of seed_everything (LightningCLI's --seed_everything), else 0
            self.train_dataset.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        if stage in (None, "fit", "validate", "test", "predict") and self.val_dataset is None:
            self.val_dataset = self.make_dataset(self.val_split, train=False)

    def train_transform(self):
        return train_transform(self.crop_size, self.scale_range, self.mean, self.std)

    def val_transform(self):
        return val_transform(self.mean, self.std)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(self.train_dataset, seed=self.train_dataset.seed)
        return ResumableLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        # Full-resolution images differ in size: batch 1, or a padded collate (padding ignored as 255).
        return DataLoader(self.val_dataset, batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=partial(pad_collate, size_divisor=8),
                          persistent_workers=self.num_workers > 0)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
