"""Test helpers shared by several test files (import them: ``from helpers import REPO, in_repo``).

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
