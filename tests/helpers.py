"""Test helpers shared by several test files (import them: ``from helpers import REPO, fit_args, in_repo``).

``in_repo`` is an autouse fixture: a test module that imports it runs each of its tests from the repository's root
(the configs' relative paths), W&B offline and quiet.
"""

from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def fit_args(root, folder, steps=3, extra=()):
    """A fit of ``steps`` steps of resnet18 on the 32 px fixture, no periodic validation unless ``extra`` asks."""
    return [
        "fit",
        "--config",
        "configs/voc/resnet.yaml",
        "--config",
        "configs/trainer/quick.yaml",
        "--data.init_args.root",
        str(root),
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.crop_size",
        "32",
        "--model.backbone",
        "resnet18",
        "--model.output_stride",
        "8",
        "--trainer.max_epochs",
        "-1",
        "--trainer.max_steps",
        str(steps),
        "--trainer.default_root_dir",
        str(folder / "logs"),
        "--trainer.enable_progress_bar",
        "false",
        "--records_root",
        str(folder / "runs"),
        "--wandb_project",
        "null",
        "--seed_everything",
        "0",
        *extra,
    ]
