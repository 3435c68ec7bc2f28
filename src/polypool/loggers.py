"""The loggers as the reproduction uses them: a CSV logger that keeps the rows of earlier attempts of a resumed
run, and a W&B logger that is offline by itself without credentials and resumes the same W&B run."""

from __future__ import annotations

import csv
import os
import secrets
import string
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override


class AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` (an earlier attempt of the same run) is kept
    and appended to, instead of deleted (Lightning: "Previous log files in this directory will be deleted").

    This overrides Lightning's private ``_check_log_dir_exists`` (and reads the writer's ``_fs``): Lightning 2.6 has
    no public way to keep a ``metrics.csv``. The writer's constructor calls that method, which deletes the file;
    ``CSVLogger`` has no append option, and its public ``save``/``log_metrics`` come after the deletion. Moving the
    file aside around the constructor would leave a moment with no ``metrics.csv`` (and a warning saying it will be
    deleted). tests/test_cli.py's resumed fit checks that the rows of both attempts are kept."""

    @override
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                header = next(csv.reader(file), [])
            self.metrics_keys = sorted(header)  # new keys later rewrite the file with the union header


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume: every attempt appends its rows. An attempt that was
    interrupted after its last checkpoint leaves rows that the resumed attempt logs again; :func:`read_metrics`
    merges them, the later attempt winning."""

    @property
    @rank_zero_experiment
    @override
    def experiment(self) -> ExperimentWriter:
        # CSVLogger.experiment with the appending writer; _experiment and _root_dir are CSVLogger's own attributes
        # (no public setter: the property is the one place Lightning builds the writer)
        if self._experiment is None:
            os.makedirs(self._root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def read_metrics(path) -> dict[int, dict[str, float]]:
    """``{step: {metric: value}}`` from a ``metrics.csv`` of one or more attempts: the rows of a step are merged,
    and a value logged again at the same step (a resumed attempt redoing steps) replaces the earlier one."""
    merged: dict[int, dict[str, float]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            if not row.get("step"):
                continue
            values = {k: float(v) for k, v in row.items() if k != "step" and v not in (None, "")}
            merged.setdefault(int(float(row["step"])), {}).update(values)
    return dict(sorted(merged.items()))


def has_wandb_credentials() -> bool:
    """An API key in the environment or in ~/.netrc (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class PolypoolWandbLogger(WandbLogger):
    """``WandbLogger`` that runs offline when no credentials are found (``offline=None``); the CLI passes the run's
    group (dataset/experiment), tags (the pooling, ...) and resolved config as ``wandb.init`` arguments.

    Offline runs are kept under ``save_dir``; ``wandb sync <run dir>`` uploads them later. The run's id is kept in
    ``<save_dir>/wandb_run_id``, so a resumed fit (``--ckpt_path last``) continues the same W&B run instead of
    starting a new one.
    """

    id_file = "wandb_run_id"

    def __init__(
        self, project: str = "polypool", save_dir: str = "results/wandb", offline: Optional[bool] = None, **kwargs: Any
    ):
        if offline is None:
            offline = not has_wandb_credentials() or os.environ.get("WANDB_MODE") == "offline"
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        if "id" not in kwargs and "version" not in kwargs:
            kwargs["id"] = self.run_id(Path(save_dir))
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)

    @classmethod
    def run_id(cls, save_dir: Path) -> str:
        """The id of this folder's W&B run: the one written by an earlier attempt, else a new one (rank 0 writes
        it; only rank 0 has a W&B run)."""
        path = save_dir / cls.id_file
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id form
        if rank_zero_only.rank == 0:
            path.write_text(run_id + "\n")
        return run_id
