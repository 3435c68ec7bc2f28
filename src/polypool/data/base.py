"""What the three DataModules share: arguments, transforms, loaders and the dataset-level attributes."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Optional, Union

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader
from typing_extensions import override

from .classes import IGNORE_INDEX
from .dataset import DatasetError, EpochSampler, ResumableLoader, SegmentationDataset, ShardSampler, name_some, repeated
from .transforms import pad_collate, train_transform, val_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegmentationDataModule(L.LightningDataModule):
    """Base of the dataset modules. Subclasses set ``num_classes``, ``class_names``, ``palette`` and implement
    ``check_layout`` (fast, no download), ``download_dataset`` and ``make_dataset(split, transform)``.

    ``prepare_data`` only checks the folders (or downloads, when ``download=True``); ``setup`` builds the datasets,
    so the module is safe under DDP.

    ``batch_size`` is the **global** batch of one optimiser step, as papers state it: under DDP each of the
    ``world_size`` processes loads ``batch_size / world_size`` samples (:meth:`per_rank_batch_size`), and a batch
    that does not divide fails in ``setup``, before training. ``val_batch_size`` is per process.

    ``mean``/``std`` default to None: the normalisation the model's pretrained backbone expects (the trainer's
    LightningModule's ``input_mean_std``, from timm's pretrained config), else ImageNet's. Pass them to override.

    ``setup("fit")`` reads every val sample once (a bad file stops the run before training, not at its end) and
    refuses a split that lists a sample twice or a sample in both the train and the val split;
    ``allow_split_overlap=True`` turns the latter into a warning, for a user who means to evaluate on training images.
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
        mean: Optional[tuple[float, float, float]] = None,
        std: Optional[tuple[float, float, float]] = None,
        train_split: str = "train",
        val_split: str = "val",
        val_batch_size: int = 1,
        check_labels: bool = True,
        download: bool = False,
        hflip: bool = True,
        allow_split_overlap: bool = False,
    ):
        super().__init__()
        self.root = Path(root).expanduser()
        self.batch_size, self.num_workers, self.val_batch_size = batch_size, num_workers, val_batch_size
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be a positive size (an int or (height, width)), got {crop_size}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std, or neither (then the backbone's pretrained config decides)")
        self.scale_range = tuple(scale_range)
        self.mean = tuple(mean) if mean is not None else None
        self.std = tuple(std) if std is not None else None
        self.hflip = hflip
        self.train_split, self.val_split = train_split, val_split
        self.check_labels, self.download = check_labels, download
        self.allow_split_overlap = allow_split_overlap
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
    @override
    def prepare_data(self) -> None:
        if self.download:
            self.download_dataset()
        self.check_layout()

    # -- DDP and normalisation ----------------------------------------------------------------------------------
    def world(self) -> tuple[int, int]:
        """(world size, global rank) of the attached trainer; (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_rank_batch_size(self) -> int:
        """``batch_size / world_size``: what each DDP process loads so that one step sees ``batch_size`` samples."""
        world_size, _ = self.world()
        if self.batch_size % world_size:
            works = [n for n in range(1, self.batch_size + 1) if self.batch_size % n == 0]
            raise ValueError(
                f"batch_size={self.batch_size} is the global batch of one step and must split evenly "
                f"over the {world_size} processes (devices x nodes); with batch_size="
                f"{self.batch_size} use {works} processes, or change the batch"
            )
        return self.batch_size // world_size

    def resolve_normalization(self) -> None:
        """Fill in ``mean``/``std`` from the model's backbone (or ImageNet's) if they were not given."""
        if self.mean is not None:
            return
        trainer = getattr(self, "trainer", None)
        model = trainer.lightning_module if trainer is not None else None
        mean_std = getattr(model, "input_mean_std", None)
        self.mean, self.std = mean_std if mean_std is not None else (IMAGENET_MEAN, IMAGENET_STD)

    @override
    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit"):
            self.per_rank_batch_size()  # fail before training, on every rank, if the batch does not split
        self.resolve_normalization()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self.make_dataset(self.train_split, train=True)
            # the seed of seed_everything (LightningCLI's --seed_everything), else 0
            self.train_dataset.seed = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        if stage in (None, "fit", "validate", "test", "predict") and self.val_dataset is None:
            self.val_dataset = self.make_dataset(self.val_split, train=False)
            if stage in (None, "fit"):
                # every val file is read now: a bad one would otherwise stop the run at its first evaluation,
                # which the quick preset holds at the very end
                self.val_dataset.check_files(f"val ({self.val_split!r})")
        if stage in (None, "fit"):
            self.check_splits()

    def check_splits(self) -> None:
        """No sample twice in a split, and none in both the train and the val split (an error, or with
        ``allow_split_overlap=True`` a warning)."""
        for split, dataset in ((self.train_split, self.train_dataset), (self.val_split, self.val_dataset)):
            twice = repeated([str(image) for image, _ in dataset.pairs])
            if twice:
                raise DatasetError(
                    f"split {split!r} lists {name_some(twice, noun='file')} more than once: each "
                    f"would count as many times as it is listed; list each image once"
                )
        train_ids = {Path(image).stem for image, _ in self.train_dataset.pairs}
        both = sorted(train_ids & {Path(image).stem for image, _ in self.val_dataset.pairs})
        if not both:
            return
        message = (
            f"{name_some(both)} in both the train split {self.train_split!r} and the val split "
            f"{self.val_split!r}: the val mIoU would be measured on images the network trained on"
        )
        if not self.allow_split_overlap:
            raise DatasetError(
                f"{message}. Remove them from one of the splits, or pass allow_split_overlap=True "
                f"(--data.init_args.allow_split_overlap true) if you mean it"
            )
        rank_zero_warn(f"{message} (allowed by allow_split_overlap=True)")

    def train_transform(self):
        self.resolve_normalization()
        return train_transform(self.crop_size, self.scale_range, self.mean, self.std, hflip=self.hflip)

    def val_transform(self):
        self.resolve_normalization()
        return val_transform(self.mean, self.std)

    @override
    def train_dataloader(self) -> DataLoader:
        world_size, rank = self.world()
        sampler = EpochSampler(self.train_dataset, seed=self.train_dataset.seed, num_replicas=world_size, rank=rank)
        return ResumableLoader(
            self.train_dataset,
            batch_size=self.per_rank_batch_size(),
            sampler=sampler,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @override
    def val_dataloader(self) -> DataLoader:
        # Full-resolution images differ in size: batch 1, or a padded collate (padding ignored as 255).
        # Every rank evaluates its own share, none padded or repeated (ShardSampler), so the summed confusion
        # matrix counts each image once.
        world_size, rank = self.world()
        return DataLoader(
            self.val_dataset,
            batch_size=self.val_batch_size,
            sampler=ShardSampler(self.val_dataset, world_size, rank),
            num_workers=self.num_workers,
            collate_fn=partial(pad_collate, size_divisor=8),
            persistent_workers=self.num_workers > 0,
        )

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    @override
    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()
