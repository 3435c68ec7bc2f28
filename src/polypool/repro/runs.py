"""The run model: one run of a table (a pooling row and a seed of one config) and the files it leaves.

A run has its own folder ``OUT/logs/<dataset>/<config>/<pooling>/<seed>`` (Lightning's ``default_root_dir``:
checkpoints, ``metrics.csv``, ``progress.json``, the run's output ``train.log`` and ``sweep.json``, the sweep's
note of its state) and, once finished, its record ``OUT/runs/<dataset>/<config>/<pooling>/<seed>.json``; the paths
are :mod:`polypool.repro.spec`'s. What a run is now (one of :data:`STATES`) is :mod:`polypool.repro.status`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import spec

STATES = ("done", "running", "failed", "partial", "missing")


@dataclass(frozen=True)
class Run:
    dataset: str
    config_name: str
    pooling: str
    seed: int
    out: Path

    @property
    def name(self) -> str:
        return f"{self.pooling} seed {self.seed}"

    @property
    def record(self) -> Path:
        return spec.record(self.out, self.dataset, self.config_name, self.pooling, self.seed)

    @property
    def logdir(self) -> Path:
        return spec.run_logdir(self.out, self.dataset, self.config_name, self.pooling, self.seed)

    @property
    def log(self) -> Path:
        return self.logdir / "train.log"

    @property
    def last_ckpt(self) -> Path:
        return self.logdir / "checkpoints" / "last.ckpt"

    @property
    def state_file(self) -> Path:
        return self.logdir / spec.STATE_FILE

    def log_path(self) -> Path:
        """The run's output (``train.log``), else its folder."""
        return self.log if self.log.is_file() else self.logdir

    def read_state(self) -> dict[str, Any]:
        return spec.read_state(self.state_file)

    def write_state(self, state: str, **values: Any) -> None:
        spec.write_state(self.state_file, state, **values)
