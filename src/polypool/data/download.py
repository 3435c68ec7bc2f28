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
    except Exception as error:  # noqa: BLE001 - URLError, HTTPError, timeouts, bad archives...
        raise DatasetError(f"could not download {what} from {url} ({type(error).__name__}: {error}). Download it "
                           f"by hand and extract it so that {expected} exists, then run again without "
                           f"download=True") from error
    if not expected.is_dir():
        raise DatasetError(f"{url} was extracted into {root}, but {expected} does not exist: check the archive")
