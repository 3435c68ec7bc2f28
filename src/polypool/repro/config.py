"""reproduce.sh's arguments (:func:`build_parser`), the sweep they describe (:class:`Sweep`, :func:`make_sweep`) and
its config as the runs will read it (:func:`read_config`: LightningCLI's own parser, the one ``python -m polypool
fit`` parses with, built without running anything).

The repository (its ``configs/``) is ``--repo DIR``, the current directory by default (``reproduce.sh`` runs from
the checkout); the package does not look for a checkout itself.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import spec
from .runs import Run
from .spec import POOLINGS

PROG = "reproduce.sh"
QUICK_WORKERS = 2  # --quick's default --workers (on a machine with at least 2 cores)


class SweepError(Exception):
    """A problem the user can fix; ``code`` is the exit status (2: bad arguments, 1: the rest)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def parse_time_minutes(text: str) -> int:
    """``--time``: minutes, ``HH:MM:SS``, ``MM:SS`` or ``D-HH:MM:SS`` (SLURM's forms) -> minutes."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"--time {text!r}: give minutes (240) or SLURM's HH:MM:SS / D-HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in match.groups())
    if b is None:  # minutes, or D-HH
        minutes = a * 60 if days is not None else a
    elif c is None:  # MM:SS, or D-HH:MM
        minutes = a * 60 + b if days is not None else a + math.ceil(b / 60)
    else:
        minutes = a * 60 + b + math.ceil(c / 60)
    minutes += (days or 0) * 24 * 60
    if minutes < 1:
        raise argparse.ArgumentTypeError(f"--time {text!r}: at least one minute")
    return minutes


def _nonnegative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive(text: str) -> int:
    value = _nonnegative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s DATASET CONFIG [--quick] [--gpus N] [--gpus-per-run K] [--workers W] [--seeds K] "
        "[--poolings a,b] [--out DIR] [--status | --prefetch | --slurm ...] [-- overrides]",
        description="Reproduce a table of the paper: train every pooling row (x seeds) of "
        "configs/DATASET/CONFIG.yaml, then regenerate the table from the run records. Finished runs "
        "(their record exists) are skipped and interrupted ones resume from their last checkpoint, so "
        "the command can simply be run again. Arguments after -- go to every run "
        "(python -m polypool fit ...).",
        epilog="examples:\n"
        "  ./reproduce.sh voc vgg --quick                      # the CPU miniature\n"
        "  ./reproduce.sh voc vgg --gpus 4                     # one run at a time on 4 GPUs (DDP)\n"
        "  ./reproduce.sh voc vgg --gpus 8 --gpus-per-run 1    # 8 runs side by side, one GPU each\n"
        "  ./reproduce.sh voc vgg --status                     # where the table stands\n"
        "  ./reproduce.sh voc vgg --prefetch                   # on a login node: data and weights\n"
        "  ./reproduce.sh voc vgg --slurm --gpus-per-run 1 --partition gpu --time 12:00:00",
    )
    parser.add_argument("dataset", metavar="DATASET", help="voc, cityscapes or ade20k")
    parser.add_argument("config_name", metavar="CONFIG", help="names configs/DATASET/CONFIG.yaml")
    parser.add_argument(
        "--quick", action="store_true", help="the CPU miniature on a generated VOC set (configs/trainer/quick.yaml)"
    )
    parser.add_argument("--gpus", type=_nonnegative, default=0, help="GPUs to use on this node (0: the CPU)")
    parser.add_argument(
        "--gpus-per-run",
        type=_positive,
        default=None,
        help="GPUs of one run (default: all of --gpus, one run at a time); --gpus / K runs train "
        "side by side, each on its own GPUs (CUDA_VISIBLE_DEVICES)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="runs side by side (default: --gpus / --gpus-per-run on GPUs, 1 on the CPU, 2 with "
        "--quick on 2 or more cores); on the CPU each gets OMP_NUM_THREADS = cores / workers "
        "unless OMP_NUM_THREADS is set",
    )
    parser.add_argument("--seeds", type=_positive, default=1, help="seeds per pooling (0 .. K-1)")
    parser.add_argument("--poolings", default=None, help=f"comma-separated rows (default: all: {','.join(POOLINGS)})")
    parser.add_argument("--out", default=None, help="results folder (default: results, results/quick with --quick)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--status", action="store_true", help="print one line per run and the table's completeness; starts nothing"
    )
    mode.add_argument(
        "--prefetch",
        action="store_true",
        help="download the dataset and every pretrained weight the runs need, then exit (on a node "
        "with internet, e.g. a login node)",
    )
    mode.add_argument(
        "--slurm",
        action="store_true",
        help="submit one job per missing run through submitit, wait, then regenerate the table",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="this node has no internet: download nothing; fail at start, naming the path, if the "
        "data or a weight is missing; runs get HF_HUB_OFFLINE=1 and WANDB_MODE=offline",
    )
    slurm = parser.add_argument_group("--slurm (submitit's AutoExecutor; GPUs per job: --gpus-per-run, else --gpus)")
    slurm.add_argument("--partition", default=None, help="SLURM partition")
    slurm.add_argument("--account", default=None, help="SLURM account")
    slurm.add_argument("--qos", default=None, help="SLURM quality of service")
    slurm.add_argument(
        "--time",
        type=parse_time_minutes,
        default=24 * 60,
        help="time limit of each job: minutes or HH:MM:SS (default 24:00:00)",
    )
    slurm.add_argument("--cpus-per-task", type=_positive, default=None, help="CPUs of each task (one task per GPU)")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory of each job, GB")
    slurm.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        default="slurm",
        help="submitit's executor: slurm (default), local (this machine, for testing) or debug",
    )
    parser.add_argument(
        "--repo",
        default=".",
        metavar="DIR",
        help="the repository whose configs/ the runs use (default: the current directory; "
        "reproduce.sh runs from its checkout)",
    )
    parser.add_argument(
        "--poll-s",
        type=float,
        default=60.0,
        help="seconds between the status lines printed while runs train side by side or as jobs",
    )
    return parser


@dataclass
class Sweep:
    dataset: str
    config_name: str
    config: Path
    quick: bool
    gpus: int
    gpus_per_run: int
    workers: int
    seeds: int
    poolings: tuple[str, ...]
    out: Path
    extra: list[str] = field(default_factory=list)
    offline: bool = False
    data_root: Optional[Path] = None  # --quick: the generated set's folder (default data/quick/voc, or OUT/data/voc)
    out_given: bool = False
    repo: Path = Path(".")  # the repository: its configs/ (--repo; reproduce.sh: the checkout)

    @property
    def runs_root(self) -> Path:
        return spec.runs_root(self.out)

    @property
    def table_stem(self) -> Path:
        return spec.table_stem(self.out, self.dataset, self.config_name)

    def runs(self) -> list[Run]:
        return [Run(self.dataset, self.config_name, p, s, self.out) for p in self.poolings for s in range(self.seeds)]

    def preset_files(self) -> list[str]:
        if self.quick:
            name = "quick"
        elif self.gpus_per_run > 1:
            name = "ddp"
        else:
            name = "gpu" if self.gpus_per_run == 1 else "cpu"
        return [str(spec.preset_file(name, self.repo))]

    def config_files(self) -> list[str]:
        """The config, then its trainer preset."""
        return [str(self.config), *self.preset_files()]

    def base_settings(self) -> list[tuple[str, Any]]:
        if self.quick:  # the generated set and the max-pooling network each pooling fine-tunes from (polypool.quick)
            return [
                ("data.init_args.root", self.quick_data_root()),
                ("model.network_weights", quick_network(self.quick_data_root())),
            ]
        if self.gpus_per_run > 1:
            return [("trainer.devices", self.gpus_per_run)]
        return []

    def base_args(self) -> list[str]:
        """The fit arguments every run of the sweep shares: the config files and the settings of its mode."""
        return spec.fit_args(self.config_files(), self.base_settings())

    def quick_data_root(self) -> Path:
        default = (self.out / "data" / "voc") if self.out_given else spec.QUICK_DATA
        return self.data_root or default

    def values(self) -> dict[str, Any]:
        """The config as the runs see it: the config, its preset and the overrides after --."""
        extra = self.extra if not self.quick else ["--data.init_args.root", str(self.quick_data_root()), *self.extra]
        return read_config(self.config_files(), extra)

    def fit_command(self, run: Run, resume: bool) -> list[str]:
        return spec.fit_command(
            self.config_files(),
            [
                *self.base_settings(),
                ("model.pooling", run.pooling),
                ("seed_everything", run.seed),
                ("trainer.default_root_dir", run.logdir),
                ("records_root", self.runs_root),
                ("experiment", self.config_name),
            ],
            resume,
            self.extra,
        )

    def max_steps(self) -> Optional[int]:
        steps = get(self.values(), "trainer.max_steps")
        return int(steps) if isinstance(steps, int) and steps > 0 else None


def get(values: dict, dotted: str, default: Any = None) -> Any:
    for key in dotted.split("."):
        if not isinstance(values, dict) or key not in values:
            return default
        values = values[key]
    return values


def quick_network(root: Path) -> Path:
    """The shared max-pooling network every --quick run fine-tunes from (:func:`polypool.repro.quick.pretrained_path`)."""
    from .quick import pretrained_path

    return pretrained_path(root)


class _ParserBuilt(Exception):
    def __init__(self, parser):
        super().__init__("parser built")
        self.parser = parser


@functools.lru_cache(maxsize=1)
def fit_parser():
    """The parser of ``python -m polypool fit``: :func:`polypool.cli.main`'s LightningCLI, built and stopped before it
    parses anything (nothing is instantiated, nothing downloaded); errors raise instead of exiting."""
    from ..cli import PolypoolCLI
    from ..data import SegmentationDataModule
    from ..models import SegmentationModel

    class ParserOnly(PolypoolCLI):
        def parse_arguments(self, parser, args) -> None:
            raise _ParserBuilt(parser)

    try:  # the classes and options of polypool.cli.main
        ParserOnly(
            SegmentationModel,
            SegmentationDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False},
            args=[],
        )
    except _ParserBuilt as built:
        return built.parser
    raise RuntimeError("LightningCLI parsed no arguments")  # pragma: no cover


def read_config(files: Sequence[Path], extra: Sequence[str]) -> dict[str, Any]:
    """The fit config of the ``files`` (in order) and the overrides ``extra``, parsed as ``python -m polypool fit
    --config F ... EXTRA`` parses them (LightningCLI's parser, :func:`fit_parser`), defaults filled in, as nested
    dicts. A config or an override that does not parse is a :class:`SweepError` (status 2) naming it."""
    return _read_config(tuple(str(f) for f in files), tuple(str(a) for a in extra))


@functools.lru_cache(maxsize=32)
def _read_config(files: tuple[str, ...], extra: tuple[str, ...]) -> dict[str, Any]:
    args = ["fit", *spec.fit_args(files), *extra]
    try:
        namespace = fit_parser().parse_args(args)
    except Exception as error:
        raise SweepError(
            f"the config does not parse as python -m polypool fit reads it ({' '.join(files)}, then "
            f"the overrides after --): {error}",
            2,
        ) from None
    return namespace["fit"].as_dict()


def resolve_config(files: Sequence[Path], extra: Sequence[str]) -> dict[str, Any]:
    """The config of ``files`` and ``extra`` (:func:`read_config`); a copy, free to change."""
    import copy

    return copy.deepcopy(read_config(files, extra))


def make_sweep(args: argparse.Namespace, extra: list[str]) -> Sweep:
    repo = Path(args.repo)
    config = spec.config_file(args.dataset, args.config_name, repo)
    if not config.is_file():
        configs = repo / spec.CONFIGS
        have = sorted(str(p.relative_to(configs)) for p in configs.glob("*/*.yaml") if p.parent.name != "trainer")
        raise SweepError(f"no config {config} (have: {' '.join(have)})", 2)
    poolings = POOLINGS
    if args.poolings is not None:
        poolings = tuple(p for p in args.poolings.split(",") if p)
        for pooling in poolings:
            if pooling not in POOLINGS:
                raise SweepError(f"--poolings: unknown row '{pooling}' (rows: {' '.join(POOLINGS)})", 2)
        if not poolings:
            raise SweepError(f"--poolings: no row given (rows: {','.join(POOLINGS)})", 2)
    if args.quick:
        if args.dataset != "voc":
            raise SweepError("--quick generates a mini VOC set; use it with 'voc'", 2)
        if args.gpus or args.gpus_per_run:
            raise SweepError(
                "--quick trains on the CPU (configs/trainer/quick.yaml): drop --gpus/--gpus-per-run "
                "(--workers N trains N runs side by side)",
                2,
            )
    if args.gpus_per_run is not None and not args.gpus and not args.slurm:
        raise SweepError(
            f"--gpus-per-run {args.gpus_per_run} needs --gpus N (the GPUs to share out), e.g. "
            f"--gpus {args.gpus_per_run * 2} --gpus-per-run {args.gpus_per_run}",
            2,
        )
    per_run = args.gpus_per_run if args.gpus_per_run is not None else args.gpus
    if args.gpus and not args.slurm and args.gpus % per_run:
        divisors = [k for k in range(1, args.gpus + 1) if args.gpus % k == 0]
        raise SweepError(
            f"--gpus {args.gpus} does not split into runs of --gpus-per-run {per_run}: use one of {divisors}", 2
        )
    slots = args.gpus // per_run if per_run else 1
    workers = args.workers if args.workers is not None else slots
    if args.workers is None and args.quick:
        # Two small CPU runs side by side, one core each, beat one run at a time on 2 cores, so the README's plain
        # --quick is the fast one (measured: results/bench/quick_workers.md).
        workers = min(QUICK_WORKERS, os.cpu_count() or 1)
    if per_run and not args.slurm and workers > slots:
        raise SweepError(
            f"--workers {workers}: {args.gpus} GPUs make only {slots} slots of {per_run} GPU(s); use "
            f"--workers {slots} or fewer",
            2,
        )
    if args.workers is not None and args.slurm:
        raise SweepError("--workers is for runs on this node; with --slurm every run is a job of its own", 2)
    out = Path(args.out) if args.out else (spec.QUICK_OUT if args.quick else spec.DEFAULT_OUT)
    sweep = Sweep(
        args.dataset,
        args.config_name,
        config,
        args.quick,
        args.gpus,
        per_run,
        workers,
        args.seeds,
        poolings,
        out,
        list(extra),
        args.offline,
        out_given=args.out is not None,
        repo=repo,
    )
    if args.quick and extra:  # a data root given after -- is where the quick set goes
        root = get(read_config(sweep.config_files(), extra), "data.init_args.root")
        if root != get(read_config(sweep.config_files(), []), "data.init_args.root"):
            sweep.data_root = Path(str(root))
    return sweep
