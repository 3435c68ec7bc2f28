"""What the notebooks in ``notebooks/`` share: where the repository and ``results/figures`` are, saving a figure,
getting the ``--quick`` reproduction's runs (running it when they are missing) and loading their checkpoints.

The repository is the current directory (``notebooks/build.py`` runs them from its root), its parent when that is
the checkout's ``notebooks/`` folder (Jupyter's working directory for a notebook opened there), or the folder named by
``POLYPOOL_REPO``: the package does not look for a checkout of its own.

The notebooks run top to bottom on a fresh clone with no GPU: anything they need that is not committed (the
quick runs, gitignored) they make with the same commands a user would type.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import torch

from . import spec

QUICK_OUT = spec.QUICK_OUT
QUICK_DATA = spec.QUICK_DATA  # where ./reproduce.sh voc vgg --quick generates its mini VOC set
REPO_ENV = "POLYPOOL_REPO"  # the repository, when the notebooks do not run from it
QUICK_LABEL = "QUICK RUN: the CPU miniature on a generated detail-heavy VOC-format set"
# Overrides for every quick run the notebooks start (reproduce.sh --quick -- ARGS, and the extra runs): the slow
# notebook test sets it to the smallest runs, since it checks that the notebooks run, not what the runs learn.
QUICK_OVERRIDES_ENV = "POLYPOOL_QUICK_OVERRIDES"


def quick_overrides() -> list[str]:
    return shlex.split(os.environ.get(QUICK_OVERRIDES_ENV, ""))


def repo_root() -> Path:
    """The repository the notebooks use: ``$POLYPOOL_REPO``, else the current directory, or its parent when the
    current directory is the repository's ``notebooks/`` folder (it has no ``configs/``, its parent has)."""
    here = Path(os.environ.get(REPO_ENV) or Path.cwd()).resolve()
    for folder in (here, here.parent):
        if (folder / spec.CONFIGS).is_dir() and (folder / "reproduce.sh").is_file():
            return folder
    raise FileNotFoundError(
        f"{here} is not the polypool repository (no configs/ and reproduce.sh there): run the "
        f"notebook from the repository's root or its notebooks/ folder, or set {REPO_ENV}"
    )


def figures_dir() -> Path:
    folder = repo_root() / spec.FIGURES
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_figure(fig, name: str) -> Path:
    """Writes ``results/figures/<name>.png`` and returns its path."""
    path = figures_dir() / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path.relative_to(repo_root())}")
    return path


def _run(command: Sequence[str]) -> None:
    print("$", " ".join(str(c) for c in command), flush=True)
    done = subprocess.run([str(c) for c in command], cwd=repo_root(), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command))} failed (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def quick_runs(dataset: str = "voc", backbone: str = "vgg") -> Path:
    """``results/quick/runs`` when it holds a record for every pooling of the table (your own ``--quick`` runs), else
    the committed reference's records (``results/quick/reference/runs``, :data:`polypool.repro.spec.REFERENCE`), which
    are read, never trained: ``./reproduce.sh voc vgg --quick`` trains your own."""
    from ..callbacks import record_file

    for runs in (spec.runs_root(repo_root() / QUICK_OUT), spec.runs_root(repo_root() / spec.REFERENCE)):
        if all(record_file(runs, dataset, backbone, p, 0).is_file() for p in spec.POOLINGS):
            return runs
    extra = quick_overrides()
    _run(["bash", "reproduce.sh", dataset, backbone, "--quick", "--workers", "2", *(["--", *extra] if extra else [])])
    return spec.runs_root(repo_root() / QUICK_OUT)


def quick_log_dir(pooling: str, dataset: str = "voc", backbone: str = "vgg", seed: int = 0) -> Path:
    """The ``trainer.default_root_dir`` of one quick run (checkpoints, metrics.csv, alpha_history.jsonl). The run
    records are committed but their checkpoints are not: in a fresh clone the same run (pooling, seed, recipe, shared
    network) is trained again beside them, in ``results/quick/logs/extra``, leaving the records as they are."""
    quick_runs(dataset, backbone)
    log_dir = spec.run_logdir(repo_root() / QUICK_OUT, dataset, backbone, pooling, seed)
    if any((log_dir / "checkpoints").glob("*.ckpt")):
        return log_dir
    if (dataset, backbone) != ("voc", "vgg"):
        raise FileNotFoundError(
            f"no checkpoint in {log_dir / 'checkpoints'}: run ./reproduce.sh {dataset} {backbone} --quick"
        )
    return train_quick_variant(
        f"{dataset}_{backbone}_{pooling}_{seed}", ["--model.pooling", pooling, "--seed_everything", str(seed)]
    )


def best_checkpoint(log_dir: Path) -> Path:
    """The best-mIoU checkpoint of a run folder (``best-step=*.ckpt``), else ``last.ckpt``."""
    folder = Path(log_dir) / "checkpoints"
    best = sorted(folder.glob("best-*.ckpt"))
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise FileNotFoundError(f"no checkpoint in {folder}: train the run first (see README.md, 'Reproducing')")


def load_model(checkpoint: Path):
    """A :class:`SegmentationModel` from a checkpoint, on the CPU, in eval mode."""
    from ..models import SegmentationModel

    model = SegmentationModel.load_from_checkpoint(checkpoint, map_location="cpu")
    return model.eval()


def train_quick_variant(
    name: str, overrides: Sequence[str], data_root: Optional[Path] = None, config: str = str(spec.QUICK_CONFIG)
) -> Path:
    """One extra quick run (the ``--quick`` preset plus ``overrides``) in ``results/quick/logs/extra/<name>``,
    trained unless its checkpoint exists; returns its log folder. The data defaults to the quick VOC set."""
    from .quick import prepare, pretrained_path

    root = repo_root()
    if data_root is None:  # the quick set and its shared max-pooling network, made if missing
        # the configs as the notebook's commands name them: relative, when it runs from the repository (as always)
        prepare(root / QUICK_DATA, quick_overrides(), repo=Path(".") if root == Path.cwd().resolve() else root)
    log_dir = root / QUICK_OUT / "logs" / "extra" / name
    if not (log_dir / "checkpoints" / "last.ckpt").is_file():
        # on the quick set, start from its shared max-pooling network, as the quick runs do
        start = [] if data_root else [("model.network_weights", pretrained_path(root / QUICK_DATA))]
        data_root = data_root or root / QUICK_DATA
        _run(
            spec.fit_command(
                [config, spec.QUICK_PRESET],
                [
                    ("data.init_args.root", data_root),
                    ("seed_everything", 0),
                    ("wandb_project", "null"),
                    ("trainer.default_root_dir", log_dir),
                    ("records_root", root / QUICK_OUT / "runs_extra"),
                    *start,
                ],
                overrides=[*quick_overrides(), *overrides],
            )
        )  # the variant's overrides last: Inception keeps its 96 px
    return log_dir


# Miniature max/P-pooling pairs for the datasets the quick reproduction does not cover: generated sets large enough
# for Inception (it needs about 75 px), trained with the dataset's own config and the quick preset.
MINIATURE_SETS = {"cityscapes": ("128", "256", "train"), "ade20k": ("128", "160", "training")}  # size, train split
MINIATURE_LABEL = "MINIATURE: CPU steps of Inception-v3 from random weights on a generated {dataset} set"


def miniature_data(dataset: str) -> Path:
    """``data/quick/<dataset>``: a generated set (32 train, 4 val images) in the official layout, made if missing."""
    root = repo_root() / "data" / "quick" / dataset
    if not root.is_dir():
        height, width, _ = MINIATURE_SETS[dataset]
        _run(
            [
                sys.executable,
                "-m",
                "polypool.data.fixtures",
                dataset,
                root,
                "--train",
                "32",
                "--val",
                "4",
                "--size",
                height,
                width,
                "--seed",
                "0",
            ]
        )
    return root


def miniature_pair(dataset: str) -> dict[str, Path]:
    """``{"max": log dir, "ppool": log dir}`` of two miniature Inception runs on :func:`miniature_data`."""
    # Inception from scratch: lr 1e-4; the quick preset's train split is VOC's name, so give the dataset's own.
    overrides = [
        "--model.backbone",
        "inception_v3",
        "--model.lr",
        "0.0001",
        "--data.init_args.crop_size",
        "96",
        "--data.init_args.train_split",
        MINIATURE_SETS[dataset][2],
    ]
    return {
        pooling: train_quick_variant(
            f"{dataset}_inception_{pooling}",
            [*overrides, "--model.pooling", pooling],
            data_root=miniature_data(dataset),
            config=f"configs/{dataset}/inception.yaml",
        )
        for pooling in ("max", "ppool")
    }


@torch.no_grad()
def predict(model, images: torch.Tensor) -> torch.Tensor:
    """Class maps ``(N, H, W)`` of normalised images (no test-time augmentation)."""
    return model(images).argmax(1)
