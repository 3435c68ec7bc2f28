"""Downloading a dataset archive when the network allows, and a clear error naming folder and URL when not."""

from __future__ import annotations

from pathlib import Path

from .dataset import DatasetError


def download_or_explain(url: str, root: Path, expected: Path, what: str) -> None:
    """Download and extract ``url`` into ``root`` (torchvision's helper); on failure, say what to fetch where."""
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    try:
        download_and_extract_archive(url, download_root=str(root))
    except Exception as error:
        raise DatasetError(
            f"could not download {what} from {url} ({type(error).__name__}: {error}). Download it "
            f"by hand and extract it so that {expected} exists, then run again without "
            f"download=True"
        ) from error
    if not expected.is_dir():
        raise DatasetError(f"{url} was extracted into {root}, but {expected} does not exist: check the archive")


def main(argv=None) -> None:
    """``python -m polypool.data.download {voc,cityscapes,ade20k} ROOT [--train-split S]``: fetch a dataset into
    ROOT in this one process (reproduce.sh runs it before any DDP launch, so no rank waits at a barrier while
    another downloads), then check its layout."""
    import argparse

    from . import ADE20KDataModule, CityscapesDataModule, VOCSegmentationDataModule

    modules = {"voc": VOCSegmentationDataModule, "cityscapes": CityscapesDataModule, "ade20k": ADE20KDataModule}
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dataset", choices=sorted(modules))
    parser.add_argument("root", type=Path)
    parser.add_argument("--train-split", default=None, help="e.g. trainaug (VOC: also fetches SBD)")
    args = parser.parse_args(argv)
    kwargs = {"train_split": args.train_split} if args.train_split else {}
    module = modules[args.dataset](args.root, download=True, **kwargs)
    try:
        module.prepare_data()
    except DatasetError as error:
        raise SystemExit(f"polypool.data.download: {error}") from None
    print(f"{args.dataset}: ready in {args.root}")


if __name__ == "__main__":
    main()
