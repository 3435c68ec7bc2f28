"""What a reproduction is made of, each fact said once: the table's rows, where a sweep's files go, the command line
of one run, and the one writer of a run's ``sweep.json``.

* :data:`ROWS`: the pooling variants of the supplement's tables, in its order, with their row labels
  (:data:`POOLINGS` their names). ``polypool.pooling.registry.POOLINGS`` is another thing (every pooling the
  library can build), not the table.
* Paths: a sweep's output folder ``OUT`` (default :data:`DEFAULT_OUT`, ``--quick``: :data:`QUICK_OUT`) holds the
  records under :func:`runs_root` (laid out by the library: :func:`polypool.callbacks.record_file`), each run's folder
  :func:`run_logdir` and the table :func:`table_stem`. The repository's files (configs, the paper's tables) are read
  from a folder given as an argument (``repo``, default the current directory; ``reproduce.sh`` runs from the
  checkout): the package itself never looks for a checkout.
* :func:`fit_command`: ``python -m polypool fit`` with config files, settings, resume and overrides, in that order
  (the sweep's runs, the quick pre-training and the notebooks' extra runs all build theirs here).
* :func:`write_state`: ``sweep.json``, written whole or not at all (a temporary file renamed over it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from ..callbacks import DEFAULT_RECORDS_ROOT, record_file

PathLike = Union[str, os.PathLike]

# -- the table ----------------------------------------------------------------------------------------------------
# The supplement's rows, in its order: (pooling name in the registry, row label).
ROWS = (
    ("max", "Max"),
    ("avg", "Average"),
    ("strided_conv", "Strided-C"),
    ("gated", "Gated"),
    ("dpp", "DPP"),
    ("ppool", "P-pooling"),
)
POOLINGS = tuple(name for name, _ in ROWS)
LABELS = dict(ROWS)

# -- the repository's files (relative to ``repo``, the checkout's root) --------------------------------------------
CONFIGS = Path("configs")
TRAINER_PRESETS = CONFIGS / "trainer"
QUICK_PRESET = TRAINER_PRESETS / "quick.yaml"
QUICK_CONFIG = CONFIGS / "voc" / "vgg.yaml"  # the miniature's config (its preset: QUICK_PRESET)
PAPER_DIR = Path("results") / "paper"  # the supplement's tables, as TSV files


def config_file(dataset: str, config_name: str, repo: PathLike = ".") -> Path:
    """``<repo>/configs/<dataset>/<config>.yaml`` (``configs/...`` as given when ``repo`` is the current folder)."""
    return Path(repo) / CONFIGS / dataset / f"{config_name}.yaml"


def preset_file(name: str, repo: PathLike = ".") -> Path:
    """``<repo>/configs/trainer/<name>.yaml``: quick, cpu, gpu or ddp."""
    return Path(repo) / TRAINER_PRESETS / f"{name}.yaml"


# -- a sweep's output ---------------------------------------------------------------------------------------------
DEFAULT_OUT = Path(DEFAULT_RECORDS_ROOT).parent  # results: the library's records go to results/runs
RUNS = Path(DEFAULT_RECORDS_ROOT).name  # runs: the records' folder inside an output folder
QUICK_OUT = DEFAULT_OUT / "quick"  # ./reproduce.sh ... --quick
QUICK_DATA = Path("data/quick/voc")  # where --quick generates its mini VOC set (without --out)
# The committed miniature (3 seeds), kept apart from a user's own results/quick/runs so that a run never takes it for
# its own: a --quick table shows it as a section of its own. Made by
# ./reproduce.sh voc vgg --quick --seeds 3 --out results/quick/reference -- --data.init_args.root data/quick/voc
REFERENCE = QUICK_OUT / "reference"
FIGURES = DEFAULT_OUT / "figures"  # the notebooks' figures
STATE_FILE = "sweep.json"  # in a run's folder: the sweep's note of the run's state


def runs_root(out: PathLike) -> Path:
    """Where the records of a sweep with output folder ``out`` go (``OUT/runs``)."""
    return Path(out) / RUNS


def record(out: PathLike, dataset: str, config_name: str, pooling: str, seed: int) -> Path:
    """A run's record (the layout is the library's: :func:`polypool.callbacks.record_file`)."""
    return record_file(runs_root(out), dataset, config_name, pooling, seed)


def run_logdir(out: PathLike, dataset: str, config_name: str, pooling: str, seed: int) -> Path:
    """A run's folder, its ``trainer.default_root_dir``: ``OUT/logs/<dataset>/<config>/<pooling>/<seed>``."""
    return Path(out) / "logs" / dataset / config_name / pooling / str(seed)


def table_stem(out: PathLike, dataset: str, config_name: str) -> Path:
    """The table's files without suffix: ``OUT/<dataset>_<config>`` (.md, .csv, .tex; the sweep's .lock)."""
    return Path(out) / f"{dataset}_{config_name}"


# -- one run ------------------------------------------------------------------------------------------------------
def fit_args(
    configs: Iterable[PathLike],
    settings: Sequence[tuple[str, Any]] = (),
    resume: bool = False,
    overrides: Iterable[Any] = (),
) -> list[str]:
    """The arguments of ``python -m polypool fit``: ``--config C ... --key value ... [--ckpt_path last] OVERRIDES``
    (every item a string; the overrides last, so that they win)."""
    args: list[str] = []
    for config in configs:
        args += ["--config", str(config)]
    for key, value in settings:
        args += [f"--{key}", str(value)]
    if resume:
        args += ["--ckpt_path", "last"]
    return args + [str(arg) for arg in overrides]


def fit_command(
    configs: Iterable[PathLike],
    settings: Sequence[tuple[str, Any]] = (),
    resume: bool = False,
    overrides: Iterable[Any] = (),
) -> list[str]:
    """``python -m polypool fit`` (this interpreter) with :func:`fit_args`."""
    return [sys.executable, "-m", "polypool", "fit", *fit_args(configs, settings, resume, overrides)]


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_env(offline: bool, base: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of every run: the weights are in the cache by now, so the hub is not asked again; ``offline``
    (a node without internet): W&B offline too."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    if offline:
        env["WANDB_MODE"] = "offline"
    return env


def write_state(path: PathLike, state: str, **values: Any) -> None:
    """The one writer of ``sweep.json``: ``{"state": ..., "time": ..., **values}``, complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"state": state, "time": time.time(), **values}) + "\n")
    tmp.replace(path)


def read_state(path: PathLike) -> dict[str, Any]:
    """``sweep.json`` as written by :func:`write_state` ({} if absent or unreadable)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
