"""A segmentation dataset over (image, mask) file pairs, with the checks that keep bad data from loading quietly."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .classes import IGNORE_INDEX


class DatasetError(ValueError):
    """Bad data on disk: the message names the file or folder and says how to fix it."""


def require_dir(path: Path, what: str, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path} does not exist or is not a folder. Expected layout:\n{layout}")
    return path


def name_some(ids, limit: int = 10, noun: str = "id") -> str:
    """How many ``ids`` there are and at most ``limit`` of them (sorted): "3 ids (a, b, c)"."""
    ids = sorted(ids)
    shown = ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
    return f"{len(ids)} {noun}{'s' if len(ids) != 1 else ''} ({shown})"


def repeated(ids: Sequence[str]) -> list[str]:
    """The ids that occur more than once in ``ids``."""
    seen, twice = set(), set()
    for image_id in ids:
        (twice if image_id in seen else seen).add(image_id)
    return sorted(twice)


def read_split_file(path: Path, layout: str, unique: bool = True) -> list[str]:
    """The ids listed in a split file, one per line (UTF-8, with or without a byte-order mark); a missing or empty
    file is an error, and so is an id listed twice (it would be trained on or evaluated twice) unless ``unique`` is
    false (lists that are merged into a set anyway, such as SBD's for trainaug)."""
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}. Expected layout:\n{layout}")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"split file {path} is empty: it should list one image id per line")
    twice = repeated(ids) if unique else []
    if twice:
        raise DatasetError(
            f"split file {path} lists {name_some(twice)} more than once: each would be used as many "
            f"times as it is listed (a repeated val id counts twice in the mIoU). Remove the repeated "
            f"lines"
        )
    return ids


def pair_by_stem(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path
) -> list[tuple[Path, Path]]:
    """Pair files that share an id; an image without a mask or a mask without an image is an error."""
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    problems = []
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} image(s) in {image_dir} without a mask in {mask_dir}, e.g. "
            f"{images[lonely_images[0]]}"
        )
    if lonely_masks:
        problems.append(
            f"{len(lonely_masks)} mask(s) in {mask_dir} without an image in {image_dir}, e.g. {masks[lonely_masks[0]]}"
        )
    if problems:
        raise DatasetError("; ".join(problems) + ". Restore the missing files or remove the extra ones.")
    return [(images[key], masks[key]) for key in sorted(images)]


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated or corrupt file fails here, not later
            return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"cannot read {path} ({type(error).__name__}: {error}): the file is corrupt or "
            f"truncated; re-extract it from the dataset archive"
        ) from error


def read_label_png(path: Path) -> np.ndarray:
    """Label values of a grey or palette PNG (a palette PNG's pixel values are its palette indices)."""
    return np.asarray(load_image(path))


class SegmentationDataset(Dataset):
    """(image, mask) samples from a list of file pairs.

    Args:
        pairs: ``(image path, mask path)``.
        num_classes: valid labels are ``0 .. num_classes-1`` and 255 (ignore).
        transform: a joint transform ``(image uint8 (3,H,W), mask int64 (H,W)) -> (image, mask)``.
        label_map: a 256-entry lookup table applied to the raw mask values (Cityscapes' labelId -> trainId,
            ADE20K's shift), or None.
        mask_reader: how to turn the mask file into label values (default: the PNG's values, which for VOC's
            palette PNGs are the palette indices).
        check_labels: raise if a mask holds a value outside ``[0, num_classes) U {255}`` (after ``label_map``).
        seed: the augmentation seed (with the epoch and the sample index).
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        num_classes: int,
        transform: Optional[Callable] = None,
        label_map: Optional[np.ndarray] = None,
        mask_reader: Optional[Callable[[Path], np.ndarray]] = None,
        check_labels: bool = True,
        seed: int = 0,
    ):
        self.pairs = list(pairs)
        self.num_classes = num_classes
        self.transform = transform
        self.label_map = label_map
        self.mask_reader = mask_reader or read_label_png
        self.check_labels = check_labels
        self.seed = seed

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The raw sample: the image as uint8 (3, H, W) and the mask as int64 (H, W), before any transform."""
        image_path, mask_path = self.pairs[index]
        image = np.asarray(load_image(image_path).convert("RGB"))
        mask = self.mask_reader(mask_path)
        if mask.ndim != 2:
            raise DatasetError(
                f"mask {mask_path} has shape {mask.shape}: a label mask is a single-channel (or "
                f"palette) image of label values"
            )
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}: they must have the same size"
            )
        if self.label_map is not None:
            mask = self.label_map[mask]
        if self.check_labels:
            values = np.unique(mask)
            bad = values[(values >= self.num_classes) & (values != IGNORE_INDEX)]
            if bad.size:
                raise DatasetError(
                    f"mask {mask_path} holds label value(s) {bad.tolist()[:10]} outside "
                    f"[0, {self.num_classes}) and {IGNORE_INDEX} (ignore): fix the mask, or pass "
                    f"check_labels=False to skip this check"
                )
        return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous(), torch.from_numpy(mask.astype(np.int64))

    def check_files(self, what: str, threads: Optional[int] = None) -> None:
        """Read every sample once as :meth:`load` does (a full decode of image and mask, the size and label checks),
        so that a bad file stops the run now rather than at an evaluation hours later. Raises :class:`DatasetError`
        naming the first bad file and how many others there are."""
        threads = threads or max(1, min(8, os.cpu_count() or 1))  # PIL and zlib decode without the GIL

        def problem(index: int) -> Optional[str]:
            try:
                self.load(index)
            except DatasetError as error:
                return str(error)
            return None

        with ThreadPoolExecutor(threads) as pool:
            found = [(i, p) for i, p in enumerate(pool.map(problem, range(len(self.pairs)))) if p is not None]
        if found:
            others = [str(self.pairs[i][0]) for i, _ in found[1:]]
            raise DatasetError(
                f"the {what} set is read once before training, and {len(found)} of its {len(self)} "
                f"samples cannot be used: {found[0][1]}"
                + (
                    f". The others (by image): {', '.join(others[:10])}"
                    f"{f' and {len(others) - 10} more' if len(others) > 10 else ''}"
                    if others
                    else ""
                )
            )

    def __getitem__(self, index: int):
        """``index`` may carry the epoch (``epoch * len(self) + i``, see :class:`EpochSampler`): the sample's
        augmentation is drawn from a generator seeded by (seed, epoch, i) alone."""
        epoch, index = divmod(index, len(self.pairs))
        image, mask = self.load(index)
        if self.transform is not None:
            seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
            image, mask = self.transform(image, mask, torch.Generator().manual_seed(seed))
        return image, mask


class EpochSampler(DistributedSampler):
    """Shuffles with a generator seeded by (seed, epoch) and hands the epoch to the dataset inside each index
    (``epoch * len + i``), so that order and augmentation are a function of the seed and the epoch only: they
    survive worker processes and a resumed run alike. Lightning calls ``set_epoch`` at every epoch; without it the
    epoch counts the iterations.

    Under DDP each of the ``num_replicas`` ranks takes every ``num_replicas``-th index of the same epoch order,
    starting at its ``rank`` (the order is cut to a multiple of ``num_replicas`` first), so one step of all ranks
    consumes distinct samples. It is a ``DistributedSampler``, so Lightning uses it as it is instead of wrapping it.
    """

    def __init__(
        self, dataset: SegmentationDataset, seed: int = 0, shuffle: bool = True, num_replicas: int = 1, rank: int = 0
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self._epoch_set = False
        self.skip = 0  # samples of this epoch (of this rank's share) already consumed (set by ResumableLoader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_set = epoch, True

    def __len__(self) -> int:
        return len(self.dataset) // self.num_replicas

    def __iter__(self):
        epoch = self.epoch
        if not self._epoch_set:
            self.epoch += 1  # no set_epoch since the last pass (a wrapping sampler): count the passes
        self._epoch_set = False
        n = len(self.dataset)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            if self.shuffle
            else torch.arange(n)
        )
        mine = order[: len(self) * self.num_replicas][self.rank :: self.num_replicas]
        skip, self.skip = self.skip, 0
        return iter((epoch * n + mine[skip:]).tolist())


class ShardSampler(DistributedSampler):
    """Evaluation order under DDP: rank r takes samples r, r + R, r + 2R, ... of the dataset, in order, **without**
    padding or dropping (Lightning's default pads 1,449 VOC val images to 1,452 on 4 ranks, counting 3 twice), so a
    dataset-level metric summed over the ranks counts every sample exactly once."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class ResumableLoader(DataLoader):
    """A training DataLoader that can save and restore its position within the epoch.

    Lightning stores ``state_dict()`` in checkpoints and calls ``load_state_dict`` when resuming, so a run resumed
    from a mid-epoch checkpoint continues with exactly the batches an uninterrupted run would see (with an
    :class:`EpochSampler`, on every rank).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._batches_done = 0
        self._resume_at = 0

    def __iter__(self):
        skip, self._resume_at = self._resume_at, 0
        if skip and isinstance(self.sampler, EpochSampler):
            self.sampler.skip = skip * self.batch_size
        self._batches_done = skip
        for batch in super().__iter__():
            self._batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": getattr(self.sampler, "epoch", 0), "batches_done": self._batches_done}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(self.sampler, EpochSampler):
            self.sampler.set_epoch(state["epoch"])
        self._resume_at = state["batches_done"]
