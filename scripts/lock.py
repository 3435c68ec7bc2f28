"""The locked environment (requirements/lock.txt): every package `make setup` installs, each with its version and
hashes, resolved by uv for CPython 3.11 on Linux x86-64 from pyproject.toml (the package and its test extra) with
torch pinned to the Makefile's version.

    python scripts/lock.py update          # re-resolve (make lock): newer releases within pyproject's ranges
    python scripts/lock.py without-torch   # the lock minus torch's build (torch, torchvision, triton, nvidia-*),
                                           # for make setup TORCH_CUDA=... / TORCH_INDEX_URL=..., where torch comes
                                           # from another index (pinned by version there, not by hash)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
# the packages that come with torch's build: another index (TORCH_CUDA) brings its own versions of them
TORCH_BUILD = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+)==", re.IGNORECASE)
PYTHON, PLATFORM = "3.11", "x86_64-manylinux_2_28"


def blocks(text: str) -> list[str]:
    """The lock's requirement blocks (a ``name==version \\`` line, its ``--hash`` lines and ``# via`` comments)."""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if line[:1].isalnum() or not out:
            out.append(line)
        else:
            out[-1] += line
    return out


def without_torch(text: str) -> str:
    return "".join(block for block in blocks(text) if not TORCH_BUILD.match(block))


def update(torch_version: str, torchvision_version: str) -> None:
    pins = REPO / "build" / "torch-pins.txt"
    pins.parent.mkdir(exist_ok=True)
    # typing: cityscapesscripts still asks for the old backport; uv takes 3.10.0.0, whose Requires-Python (< 3.5)
    # pip refuses, so the lock holds the last one pip installs on Python 3
    pins.write_text(f"torch=={torch_version}\ntorchvision=={torchvision_version}\ntyping==3.7.4.3\n")
    command = [
        "uv",
        "pip",
        "compile",
        "pyproject.toml",
        "--extra",
        "test",
        "--generate-hashes",
        "--python-version",
        PYTHON,
        "--python-platform",
        PLATFORM,
        "--constraint",
        str(pins),
        "--no-header",
        "--quiet",
        "--output-file",
        str(LOCK),
    ]
    subprocess.run(command, cwd=REPO, check=True)
    header = (
        f"# The locked environment of `make setup` (CPython {PYTHON}, Linux x86-64, PyPI's torch), every package "
        f"with its hashes.\n# Made by `make lock` (python scripts/lock.py update); do not edit by hand.\n"
    )
    LOCK.write_text(header + LOCK.read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("update")
    up.add_argument("--torch", default="2.14.1")
    up.add_argument("--torchvision", default="0.29.1")
    sub.add_parser("without-torch")
    args = parser.parse_args(argv)
    if args.command == "update":
        update(args.torch, args.torchvision)
    else:
        sys.stdout.write(without_torch(LOCK.read_text()))


if __name__ == "__main__":
    main()
