"""The runs of a table and how they are run: ``reproduce.sh`` is a thin entry point to :func:`main`.

A table is every pooling row (:data:`POOLINGS`) x seeds of one config (``configs/<dataset>/<config>.yaml``). Each run
has its own folder ``OUT/logs/<dataset>/<config>/<pooling>/<seed>`` (Lightning's ``default_root_dir``: checkpoints,
``metrics.csv``, ``progress.json``, the run's output ``train.log`` and ``sweep.json``, the sweep's note of its
state) and, once finished, its record ``OUT/runs/<dataset>/<config>/<pooling>/<seed>.json``.

:func:`plan` says what each run is (:func:`inspect_run`):

* ``done``: its record exists (and reads: :func:`polypool.callbacks.read_record`); never run again;
* ``running``: a live process (this host: its pid; elsewhere: a SLURM job in the queue, else a ``progress.json``
  written in the last 15 minutes) is training it; left alone;
* ``failed``: its last attempt exited non-zero, or its record is damaged (truncated, not JSON, no IoU: the
  detail says ``damaged record: <path> (<why>)``); tried again (from ``last.ckpt`` if there is one), a damaged
  record first moved aside to ``<seed>.json.damaged`` (:func:`set_aside_damaged_record`);
* ``partial``: interrupted, ``checkpoints/last.ckpt`` exists; resumed with ``--ckpt_path last``;
* ``missing``: not started (or stopped before its first checkpoint); started from scratch.

The runs to do are then trained by a local pool of ``--workers`` processes, each pinned to its own
``--gpus-per-run`` GPUs (``CUDA_VISIBLE_DEVICES``), a new one starting whenever one ends (:func:`run_local`), or
submitted as one job each through submitit (:func:`run_slurm`); a failed run does not stop the others. The table is
regenerated (``python -m polypool.tables``) when they end; the exit status is 1 if a run failed, with the list.

Before anything starts: ``--gpus N`` checks that torch sees N GPUs (:func:`gpu_problem`); the data (download or
the generated quick set) and the pretrained weights of the config (:func:`weight_needs`) are fetched once, here,
or, with ``--offline``, checked; ``--prefetch`` only does that (on a login node) and exits.

Signals and locks (issue 32, sections 1 and 2). SIGTERM and SIGINT stop the sweep at any stage
(:mod:`polypool.stopping`): every child it started (each in a session of its own) gets SIGTERM, a run or the quick
pre-training saves its ``last.ckpt`` and ends (killed after 30 s), and the sweep says what was left and how to go
on, exiting 143 (SIGTERM) or 130 (SIGINT). A sweep that trains holds ``OUT/<dataset>_<config>.lock``
(:func:`sweep_lock`; :mod:`polypool.locking`): a second sweep of the same config and folder stops at once, naming
the first (pid, host, start time, command); each run holds ``<logdir>/run.lock`` with its process (:func:`run_lock`),
and ``--quick``'s data folder ``quick.lock`` while the set and the pre-training are made (a sweep with another
--out waits for it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from .callbacks import record_file
from .locking import FolderLock, LockHeld, describe_holder
from .stopping import Stopped, raise_stopped, run_child, stop_on_signals, stop_process

POOLINGS = ("max", "avg", "strided_conv", "gated", "dpp", "ppool")  # the rows of the supplement's tables
STATES = ("done", "running", "failed", "partial", "missing")
PROG = "reproduce.sh"
# The CUDA builds of torch on https://download.pytorch.org/whl/<flavour>; the fix names the newest one the
# driver supports.
TORCH_CUDA_FLAVOURS = ("cu118", "cu121", "cu124", "cu126", "cu128", "cu129", "cu130")
HEARTBEAT_S = 15 * 60  # a run on another host counts as running while its progress.json is younger than this
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
QUICK_WORKERS = 2  # --quick's default --workers (on a machine with at least 2 cores)


class SweepError(Exception):
    """A problem the user can fix; ``code`` is the exit status (2: bad arguments, 1: the rest)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# -- the runs -----------------------------------------------------------------------------------------------------
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
        return record_file(self.out / "runs", self.dataset, self.config_name, self.pooling, self.seed)

    @property
    def logdir(self) -> Path:
        return self.out / "logs" / self.dataset / self.config_name / self.pooling / str(self.seed)

    @property
    def log(self) -> Path:
        return self.logdir / "train.log"

    @property
    def last_ckpt(self) -> Path:
        return self.logdir / "checkpoints" / "last.ckpt"

    @property
    def state_file(self) -> Path:
        return self.logdir / "sweep.json"

    def log_path(self) -> Path:
        """The run's output (``train.log``), else its folder."""
        return self.log if self.log.is_file() else self.logdir

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def write_state(self, state: str, **values: Any) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"state": state, "time": time.time(), **values}) + "\n")
        tmp.replace(self.state_file)


@dataclass
class RunStatus:
    run: Run
    state: str
    step: Optional[int] = None
    max_steps: Optional[int] = None
    miou: Optional[float] = None
    elapsed: Optional[float] = None
    detail: str = ""

    def line(self) -> str:
        from .progress import format_duration

        step = "-" if self.step is None else str(self.step)
        total = "?" if not self.max_steps else str(self.max_steps)
        miou = "-" if self.miou is None else f"{self.miou:.4f}"
        state = self.state + (f" ({self.detail})" if self.detail else "")
        return (f"{self.run.pooling:<13} {self.run.seed:>4}  {state:<24} {step + '/' + total:>13}  {miou:>7}  "
                f"{format_duration(self.elapsed):>9}  {self.run.log_path()}")


STATUS_HEADER = f"{'pooling':<13} {'seed':>4}  {'state':<24} {'step':>13}  {'mIoU':>7}  {'elapsed':>9}  log"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    cmdline = Path(f"/proc/{int(pid)}/cmdline")
    if cmdline.parent.is_dir():  # a recycled pid: not one of ours
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        return b"polypool" in text or b"submitit" in text
    return True


def _slurm_job_alive(job_id: str) -> Optional[bool]:
    """Whether SLURM still has the job (pending or running); None when ``squeue`` is not here."""
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.returncode == 0 and bool(out.stdout.strip())


def is_alive(run: Run, state: dict[str, Any]) -> bool:
    """Whether the process (or job) that ``sweep.json`` names is still at it."""
    from .progress import read_progress

    if state.get("host") == socket.gethostname() and state.get("pid"):
        return _pid_alive(state["pid"])
    if state.get("slurm_job"):
        alive = _slurm_job_alive(state["slurm_job"])
        if alive is not None:
            return alive
    progress = read_progress(run.logdir) or {}
    updated = progress.get("updated") or state.get("time") or 0
    return time.time() - float(updated) < HEARTBEAT_S


DONE_RECORD_KEYS = ("miou",)  # what --status shows of a record; any RunRecord has it (and per_class_iou)


def inspect_run(run: Run, max_steps: Optional[int] = None) -> RunStatus:
    """What ``run`` is now (one of :data:`STATES`), with its step, last mIoU and elapsed time. A record that is
    there but does not read (:func:`polypool.callbacks.read_record`) is not done: the run is ``failed``, with the
    detail "damaged record: <path> (<why>); it will be trained again" (unless a live process trains it)."""
    from .callbacks import DamagedRecord, read_record
    from .loggers import read_metrics
    from .progress import read_progress

    progress = read_progress(run.logdir) or {}
    damaged: Optional[DamagedRecord] = None
    if run.record.is_file():
        try:
            record = read_record(run.record, required=DONE_RECORD_KEYS)
        except DamagedRecord as error:
            damaged = error
        else:
            steps = record.get("steps")
            return RunStatus(run, "done", steps, progress.get("max_steps") or max_steps or steps, record.get("miou"),
                             record.get("wall_time_s"))
    status = RunStatus(run, "missing", max_steps=max_steps)
    if progress:
        status.step, status.elapsed = progress.get("step"), progress.get("elapsed_s")
        status.max_steps = progress.get("max_steps") or max_steps
        status.miou = progress.get("miou")
    metrics = run.logdir / "metrics.csv"
    if metrics.is_file():
        try:
            history = read_metrics(metrics)
        except (OSError, ValueError, KeyError):
            history = {}
        if history:
            status.step = max(status.step or 0, max(history))
            validated = [values["val/mIoU"] for values in history.values() if "val/mIoU" in values]
            if validated:
                status.miou = validated[-1]
    state = run.read_state()
    if state.get("state") in ("running", "submitted") and is_alive(run, state):
        status.state = "running"
        status.detail = f"job {state['slurm_job']}" if state.get("slurm_job") else ""
    elif state.get("state") == "failed":
        status.state = "failed"
        status.detail = f"exit {state.get('returncode')}" if state.get("returncode") is not None else ""
    elif run.last_ckpt.is_file():
        status.state = "partial"
    if damaged is not None and status.state != "running":
        status.state = "failed"
        status.detail = f"damaged record: {damaged.path} ({damaged.why}); it will be trained again"
    return status


def set_aside_damaged_record(run: Run, say=print) -> Optional[Path]:
    """Moves ``run``'s record to ``<seed>.json.damaged`` (``.damaged.1``, ... if taken) when it is there but does
    not read, so that the run is trained again and nothing is lost; returns where it went (None: no damaged
    record)."""
    from .callbacks import DamagedRecord, read_record

    if not run.record.is_file():
        return None
    try:
        read_record(run.record, required=DONE_RECORD_KEYS)
        return None  # it reads (written since the plan was made): nothing to set aside
    except DamagedRecord as error:
        why = error.why
    target = run.record.with_name(run.record.name + ".damaged")
    number = 0
    while target.exists():
        number += 1
        target = run.record.with_name(f"{run.record.name}.damaged.{number}")
    os.replace(run.record, target)
    say(f"== {run.name}: its record {run.record} is damaged ({why}); kept as {target}, training the run again")
    return target


def runs_to_train(statuses: list[RunStatus], say=print) -> list[tuple[Run, bool]]:
    """``(run, resume from last.ckpt)`` for every run that is neither done nor running elsewhere, a damaged
    record moved aside first (:func:`set_aside_damaged_record`); says what happens to the others."""
    todo = []
    for status in statuses:
        run = status.run
        if status.state == "done":
            say(f"== {run.name}: done ({run.record})")
        elif status.state == "running":
            say(f"== {run.name}: running elsewhere ({status.detail or run.read_state().get('host', '?')}); "
                f"log: {run.log_path()}")
        else:
            set_aside_damaged_record(run, say)
            todo.append((run, run.last_ckpt.is_file()))
    return todo


# -- arguments and the config -------------------------------------------------------------------------------------
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
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
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
               "  ./reproduce.sh voc vgg --slurm --gpus-per-run 1 --partition gpu --time 12:00:00")
    parser.add_argument("dataset", metavar="DATASET", help="voc, cityscapes or ade20k")
    parser.add_argument("config_name", metavar="CONFIG", help="names configs/DATASET/CONFIG.yaml")
    parser.add_argument("--quick", action="store_true",
                        help="the CPU miniature on a generated VOC set (configs/trainer/quick.yaml)")
    parser.add_argument("--gpus", type=_nonnegative, default=0, help="GPUs to use on this node (0: the CPU)")
    parser.add_argument("--gpus-per-run", type=_positive, default=None,
                        help="GPUs of one run (default: all of --gpus, one run at a time); --gpus / K runs train "
                             "side by side, each on its own GPUs (CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--workers", type=_positive, default=None,
                        help="runs side by side (default: --gpus / --gpus-per-run on GPUs, 1 on the CPU, 2 with "
                             "--quick on 2 or more cores); on the CPU each gets OMP_NUM_THREADS = cores / workers "
                             "unless OMP_NUM_THREADS is set")
    parser.add_argument("--seeds", type=_positive, default=1, help="seeds per pooling (0 .. K-1)")
    parser.add_argument("--poolings", default=None, help=f"comma-separated rows (default: all: {','.join(POOLINGS)})")
    parser.add_argument("--out", default=None,
                        help="results folder (default: results, results/quick with --quick)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--status", action="store_true",
                      help="print one line per run and the table's completeness; starts nothing")
    mode.add_argument("--prefetch", action="store_true",
                      help="download the dataset and every pretrained weight the runs need, then exit (on a node "
                           "with internet, e.g. a login node)")
    mode.add_argument("--slurm", action="store_true",
                      help="submit one job per missing run through submitit, wait, then regenerate the table")
    parser.add_argument("--offline", action="store_true",
                        help="this node has no internet: download nothing; fail at start, naming the path, if the "
                             "data or a weight is missing; runs get HF_HUB_OFFLINE=1 and WANDB_MODE=offline")
    slurm = parser.add_argument_group("--slurm (submitit's AutoExecutor; GPUs per job: --gpus-per-run, else --gpus)")
    slurm.add_argument("--partition", default=None, help="SLURM partition")
    slurm.add_argument("--account", default=None, help="SLURM account")
    slurm.add_argument("--qos", default=None, help="SLURM quality of service")
    slurm.add_argument("--time", type=parse_time_minutes, default=24 * 60,
                       help="time limit of each job: minutes or HH:MM:SS (default 24:00:00)")
    slurm.add_argument("--cpus-per-task", type=_positive, default=None, help="CPUs of each task (one task per GPU)")
    slurm.add_argument("--mem-gb", type=float, default=None, help="memory of each job, GB")
    slurm.add_argument("--slurm-cluster", choices=("slurm", "local", "debug"), default="slurm",
                       help="submitit's executor: slurm (default), local (this machine, for testing) or debug")
    parser.add_argument("--poll-s", type=float, default=60.0,
                        help="seconds between the status lines printed while runs train side by side or as jobs")
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

    @property
    def runs_root(self) -> Path:
        return self.out / "runs"

    @property
    def table_stem(self) -> Path:
        return self.out / f"{self.dataset}_{self.config_name}"

    def runs(self) -> list[Run]:
        return [Run(self.dataset, self.config_name, p, s, self.out) for p in self.poolings for s in range(self.seeds)]

    def preset_files(self) -> list[str]:
        if self.quick:
            return ["configs/trainer/quick.yaml"]
        if self.gpus_per_run > 1:
            return ["configs/trainer/ddp.yaml"]
        return ["configs/trainer/gpu.yaml" if self.gpus_per_run == 1 else "configs/trainer/cpu.yaml"]

    def base_args(self) -> list[str]:
        args = ["--config", str(self.config)]
        for preset in self.preset_files():
            args += ["--config", preset]
        if self.quick:  # the generated set and the max-pooling network each pooling fine-tunes from (polypool.quick)
            args += ["--data.init_args.root", str(self.quick_data_root()),
                     "--model.network_weights", str(quick_network(self.quick_data_root()))]
        elif self.gpus_per_run > 1:
            args += ["--trainer.devices", str(self.gpus_per_run)]
        return args

    def quick_data_root(self) -> Path:
        default = (self.out / "data" / "voc") if self.out_given else Path("data/quick/voc")
        return self.data_root or default

    def values(self) -> dict[str, Any]:
        """The config as the runs see it: the config, its preset and the overrides after --."""
        files = [self.config] + [Path(p) for p in self.preset_files()]
        extra = self.extra if not self.quick else ["--data.init_args.root", str(self.quick_data_root())] + self.extra
        return resolve_config(files, extra)

    def fit_command(self, run: Run, resume: bool) -> list[str]:
        return [sys.executable, "-m", "polypool", "fit", *self.base_args(), "--model.pooling", run.pooling,
                "--seed_everything", str(run.seed), "--trainer.default_root_dir", str(run.logdir),
                "--records_root", str(self.runs_root), "--experiment", self.config_name,
                *(["--ckpt_path", "last"] if resume else []), *self.extra]

    def max_steps(self) -> Optional[int]:
        steps = get(self.values(), "trainer.max_steps")
        return int(steps) if isinstance(steps, int) and steps > 0 else None


def get(values: dict, dotted: str, default: Any = None) -> Any:
    for key in dotted.split("."):
        if not isinstance(values, dict) or key not in values:
            return default
        values = values[key]
    return values


def resolve_config(files: Sequence[Path], extra: Sequence[str]) -> dict[str, Any]:
    """The YAML ``files`` merged in order (nested keys), then the ``--a.b.c value`` / ``--a.b.c=value`` overrides
    of ``extra`` (values read as YAML). Enough to know the data root, the backbone and the steps, as LightningCLI
    will see them; the runs themselves parse the real thing."""

    def merge(into: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(into.get(key), dict):
                merge(into[key], value)
            else:
                into[key] = value

    values: dict[str, Any] = {}
    for path in files:
        merge(values, yaml.safe_load(Path(path).read_text()) or {})
    i = 0
    while i < len(extra):
        arg = extra[i]
        if arg.startswith("--") and "+=" not in arg:
            key, value = (arg[2:].split("=", 1) + [None])[:2] if "=" in arg else (arg[2:], None)
            if value is None and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                value, i = extra[i + 1], i + 1
            if value is not None and key:
                try:
                    parsed = yaml.safe_load(value)
                except yaml.YAMLError:
                    parsed = value
                node = values
                parts = key.split(".")
                for part in parts[:-1]:
                    if not isinstance(node.get(part), dict):
                        node[part] = {}
                    node = node[part]
                node[parts[-1]] = parsed
        i += 1
    return values


def make_sweep(args: argparse.Namespace, extra: list[str]) -> Sweep:
    config = Path("configs") / args.dataset / f"{args.config_name}.yaml"
    if not config.is_file():
        have = sorted(str(p.relative_to("configs")) for p in Path("configs").glob("*/*.yaml")
                      if p.parent.name != "trainer")
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
            raise SweepError("--quick trains on the CPU (configs/trainer/quick.yaml): drop --gpus/--gpus-per-run "
                             "(--workers N trains N runs side by side)", 2)
    if args.gpus_per_run is not None and not args.gpus and not args.slurm:
        raise SweepError(f"--gpus-per-run {args.gpus_per_run} needs --gpus N (the GPUs to share out), e.g. "
                         f"--gpus {args.gpus_per_run * 2} --gpus-per-run {args.gpus_per_run}", 2)
    per_run = args.gpus_per_run if args.gpus_per_run is not None else args.gpus
    if args.gpus and not args.slurm and args.gpus % per_run:
        divisors = [k for k in range(1, args.gpus + 1) if args.gpus % k == 0]
        raise SweepError(f"--gpus {args.gpus} does not split into runs of --gpus-per-run {per_run}: use one of "
                         f"{divisors}", 2)
    slots = args.gpus // per_run if per_run else 1
    workers = args.workers if args.workers is not None else slots
    if args.workers is None and args.quick:
        # Two small CPU runs side by side, one core each, beat one run at a time on both (measured on 2 cores: Max
        # and Average fine-tunes took 51 s + 51 s one after the other, 79 s side by side), so the README's plain
        # --quick is the fast one.
        workers = min(QUICK_WORKERS, os.cpu_count() or 1)
    if per_run and not args.slurm and workers > slots:
        raise SweepError(f"--workers {workers}: {args.gpus} GPUs make only {slots} slots of {per_run} GPU(s); use "
                         f"--workers {slots} or fewer", 2)
    if args.workers is not None and args.slurm:
        raise SweepError("--workers is for runs on this node; with --slurm every run is a job of its own", 2)
    out = Path(args.out) if args.out else Path("results/quick" if args.quick else "results")
    sweep = Sweep(args.dataset, args.config_name, config, args.quick, args.gpus, per_run, workers, args.seeds,
                  poolings, out, list(extra), args.offline, out_given=args.out is not None)
    if args.quick:
        root = get(resolve_config([], extra), "data.init_args.root")
        if root is not None:
            sweep.data_root = Path(str(root))
    return sweep


# -- the node: GPUs, data, weights --------------------------------------------------------------------------------
def nvidia_smi() -> Optional[dict[str, Any]]:
    """The driver's version, the CUDA version it supports and its GPUs (``nvidia-smi``), or None without it."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60)
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": str(error)}
    driver = re.search(r"Driver Version:\s*([\d.]+)", out.stdout)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", out.stdout)
    return {"driver": driver.group(1) if driver else None, "cuda": cuda.group(1) if cuda else None,
            "gpus": len([line for line in listing.stdout.splitlines() if line.startswith("GPU ")]),
            "error": (out.stderr or out.stdout).strip()[:300] if out.returncode else None}


def _version_tuple(text: Optional[str]) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text or "")[:2])


def flavour_for(driver_cuda: Optional[str]) -> str:
    """The newest torch CUDA flavour (:data:`TORCH_CUDA_FLAVOURS`) that a driver supporting ``driver_cuda`` runs."""
    supported = _version_tuple(driver_cuda)
    fitting = [f for f in TORCH_CUDA_FLAVOURS if (int(f[2:-1]), int(f[-1])) <= supported]
    return fitting[-1] if fitting else TORCH_CUDA_FLAVOURS[0]


def gpu_problem(wanted: int) -> Optional[str]:
    """None if torch sees at least ``wanted`` GPUs, else what is wrong, with torch's and the driver's CUDA
    versions and the command that fixes it."""
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen >= wanted:
        return None
    built = torch.version.cuda
    smi = nvidia_smi()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    lines = [f"--gpus {wanted}, but torch sees {seen} GPU(s).",
             f"  torch {torch.__version__}: built for CUDA {built} (torch.version.cuda)" if built else
             f"  torch {torch.__version__}: a CPU-only build (torch.version.cuda is None)"]
    if smi is None:
        lines.append("  driver: no nvidia-smi on PATH, so no NVIDIA driver on this node (a login node? run on a GPU "
                     "node, or submit the runs with --slurm)")
        fix = "run on a node with NVIDIA GPUs (or: make setup TORCH_CUDA=cu126 there, for a driver of CUDA 12.6+)"
    elif smi.get("error") and not smi.get("driver"):
        lines.append(f"  driver: nvidia-smi failed: {smi['error']}")
        fix = "fix the NVIDIA driver (nvidia-smi must list the GPUs), then run again"
    else:
        lines.append(f"  driver: {smi['driver']}, supports CUDA up to {smi['cuda']} (nvidia-smi); "
                     f"{smi['gpus']} GPU(s) listed by nvidia-smi -L")
        flavour = flavour_for(smi["cuda"])
        if built is None or _version_tuple(built) > _version_tuple(smi["cuda"]):
            fix = (f"make setup TORCH_CUDA={flavour}   (torch built for CUDA {smi['cuda']} or older; README.md, "
                   f"'Reproducing the tables'), or update the driver")
        elif visible is not None and smi["gpus"] >= wanted:
            fix = f"unset CUDA_VISIBLE_DEVICES (now {visible!r}) or set it to {wanted} GPUs"
        else:
            fix = f"--gpus {min(seen, smi['gpus'])} (this node has {smi['gpus']})"
    if visible is not None:
        lines.append(f"  CUDA_VISIBLE_DEVICES={visible!r}")
    lines.append(f"  fix: {fix}")
    return "\n".join(lines)


@dataclass
class WeightNeed:
    """A pretrained weight a run loads: from the Hugging Face hub (``hf-hub``), a URL (torch hub's cache), a local
    file, or nothing (``pretrained: false``)."""

    backbone: str
    source: str
    location: str
    filenames: tuple[str, ...] = ()

    def urls(self) -> list[str]:
        if self.source == "hf-hub":
            return [f"https://huggingface.co/{self.location}/resolve/main/{name}" for name in self.filenames]
        return [self.location] if self.source == "url" else []

    def cache_dir(self) -> Path:
        if self.source == "hf-hub":
            from huggingface_hub import constants

            return Path(constants.HF_HUB_CACHE)
        if self.source == "url":
            import torch

            return Path(torch.hub.get_dir()) / "checkpoints"
        return Path(self.location).parent

    def looked_in(self) -> list[Path]:
        """Where a cached copy would be."""
        if self.source == "hf-hub":
            return [self.cache_dir() / f"models--{self.location.replace('/', '--')}"]
        if self.source == "url":
            return [self.cache_dir() / Path(self.location).name]
        return [Path(self.location)]

    def cached(self) -> Optional[Path]:
        if self.source == "hf-hub":
            from huggingface_hub import try_to_load_from_cache

            for name in self.filenames:
                found = try_to_load_from_cache(self.location, name)
                if isinstance(found, str):
                    return Path(found)
            return None
        path = self.looked_in()[0]
        return path if path.is_file() else None


def weight_needs(values: dict[str, Any]) -> list[WeightNeed]:
    """The pretrained weights of the resolved config (``model.backbone``, ``pretrained``, ``weights``)."""
    backbone = get(values, "model.backbone")
    weights = get(values, "model.weights")
    if weights:
        return [WeightNeed(str(backbone), "file", str(Path(str(weights)).expanduser()))]
    if not get(values, "model.pretrained", False) or not backbone:
        return []
    import timm
    from timm.models import get_pretrained_cfg

    from .models.networks import AUTHORS_BACKBONES

    if str(backbone) in AUTHORS_BACKBONES:  # the authors' ResNet-50: CSAIL's file, through torch hub's cache
        from .models.authors_resnet import AUTHORS_RESNET50_URL

        return [WeightNeed(str(backbone), "url", AUTHORS_RESNET50_URL)]
    if not timm.is_model(str(backbone)):
        raise SweepError(f"model.backbone {backbone!r} is not a timm model")
    cfg = get_pretrained_cfg(str(backbone))
    if cfg is None:
        raise SweepError(f"timm has no pretrained weights for {backbone!r}; set model.pretrained false or pass "
                         f"-- --model.weights FILE")
    try:
        from timm.models._builder import _resolve_pretrained_source  # timm's own choice of source

        source, location = _resolve_pretrained_source(cfg.to_dict())
    except Exception:  # noqa: BLE001 - a timm without it: the hub first, as timm does
        source, location = ("hf-hub", cfg.hf_hub_id) if cfg.hf_hub_id else ("url", cfg.url)
    if source == "hf-hub":
        if isinstance(location, tuple):
            return [WeightNeed(str(backbone), source, location[0], (location[1],))]
        return [WeightNeed(str(backbone), source, location, ("model.safetensors", "pytorch_model.bin"))]
    if source == "url" and location:
        return [WeightNeed(str(backbone), "url", location)]
    raise SweepError(f"cannot tell where timm loads {backbone!r}'s weights from (source {source!r})")


def _probe(url: str, timeout: float = 15.0) -> Optional[str]:
    """None if ``url``'s server answers (any HTTP status), else why not. One try, unlike the hub's retries."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # the server answered; the download below reports what it said
    except (urllib.error.URLError, OSError) as error:
        return f"{type(error).__name__}: {getattr(error, 'reason', error)}"
    return None


def fetch_weight(need: WeightNeed) -> Path:
    """Download ``need`` into its cache (timm's own loading, so the files land where the runs look) and return the
    cached file; an error names the URL and the folder."""
    cache = need.cache_dir()
    for url in need.urls()[:1]:
        problem = _probe(url)
        if problem:
            raise SweepError(f"cannot download the pretrained weights of {need.backbone}: {url} is unreachable "
                             f"({problem}). They go to {cache}. Run --prefetch on a node with internet (e.g. the "
                             f"login node; same HF_HOME / TORCH_HOME), or pass a local file: -- --model.weights FILE")
    import timm

    try:
        timm.create_model(need.backbone, pretrained=True)
    except Exception as error:  # noqa: BLE001 - hub, HTTP and file errors
        raise SweepError(f"cannot download the pretrained weights of {need.backbone} from {need.urls()} into "
                         f"{cache} ({type(error).__name__}: {error})") from error
    found = need.cached()
    if found is None:
        raise SweepError(f"timm loaded {need.backbone}'s weights but they are not in {cache}: check HF_HOME / "
                         f"TORCH_HOME")
    return found


def ensure_weights(values: dict[str, Any], offline: bool, say=print) -> None:
    """Every pretrained weight of the config in its cache: already there, fetched now, or (``offline``) an error
    naming where it looked."""
    for need in weight_needs(values):
        if need.source == "file":
            if not Path(need.location).is_file():
                raise SweepError(f"model.weights: no file {need.location}: pass the path of a timm checkpoint or "
                                 f"state dict for {need.backbone}")
            say(f"weights: {need.backbone} from the local file {need.location}: nothing to fetch")
            continue
        found = need.cached()
        if found is not None:
            say(f"weights: {need.backbone} already in {found}: nothing to fetch")
            continue
        if offline:
            raise SweepError(f"the pretrained weights of {need.backbone} are missing: looked in "
                             f"{', '.join(str(p) for p in need.looked_in())} ({', '.join(need.urls())}). Run "
                             f"./reproduce.sh <dataset> <config> --prefetch on a node with internet (same HF_HOME / "
                             f"TORCH_HOME), or pass -- --model.weights FILE")
        say(f"weights: downloading {need.backbone} ({need.urls()[0]}) into {need.cache_dir()}")
        say(f"weights: {need.backbone} in {fetch_weight(need)}")
    if not weight_needs(values):
        say("weights: the config loads no pretrained weights (pretrained: false): nothing to fetch")


def quick_network(root: Path) -> Path:
    from .quick import pretrained_path

    return pretrained_path(root)


def quick_data(root: Path, overrides: Sequence[str] = (), say=print) -> None:
    """The generated set of ``--quick`` and the max-pooling network every pooling fine-tunes from (the one place
    they are made: :func:`polypool.quick.prepare`; the overrides after -- apply to its pre-training too)."""
    from .quick import QuickError, prepare

    try:
        prepare(root, overrides, say)
    except QuickError as error:
        raise SweepError(str(error)) from error


def dataset_ready(dataset: str, root: Path, train_split: str) -> Optional[str]:
    """None if ``root`` holds the dataset in its layout, else the layout check's message."""
    from .data import ADE20KDataModule, CityscapesDataModule, VOCSegmentationDataModule
    from .data.dataset import DatasetError

    modules = {"voc": VOCSegmentationDataModule, "cityscapes": CityscapesDataModule, "ade20k": ADE20KDataModule}
    if dataset not in modules:
        return f"unknown dataset {dataset!r}"
    try:
        modules[dataset](root, train_split=train_split).check_layout()
    except DatasetError as error:
        return str(error)
    except TypeError:
        modules[dataset](root).check_layout()
    return None


def prepare_data(sweep: Sweep, prefetch: bool = False, say=print) -> None:
    """The data the runs read, once, before any run: the quick set generated; else downloaded when the config (or
    ``--prefetch``) asks for it, then the root must hold the dataset in its layout (:func:`dataset_ready`)."""
    if sweep.quick:
        quick_data(sweep.quick_data_root(), sweep.extra, say)
        if prefetch:
            say(f"data: the generated quick set in {sweep.quick_data_root()}: nothing to fetch")
        return
    values = sweep.values()
    root = Path(str(get(values, "data.init_args.root", "data")))
    download = str(get(values, "data.init_args.download", False)).lower() == "true"
    train_split = str(get(values, "data.init_args.train_split", "train"))
    if prefetch:
        problem = dataset_ready(sweep.dataset, root, train_split)
        if problem is None:
            say(f"data: {sweep.dataset} already in {root}: nothing to fetch")
            return
        download = True
    if download and not sweep.offline:
        command = [sys.executable, "-m", "polypool.data.download", sweep.dataset, str(root),
                   "--train-split", train_split]
        try:
            code = run_child(command)
        except Stopped as stop:
            stop.left = (f"while downloading the {sweep.dataset} data into {root}: run the same command again to "
                         f"download it")
            raise
        if code:
            raise SweepError(f"the download failed ({shlex.join(command)})")
    if not root.is_dir():
        raise SweepError(f"no data at {root}. See README.md, 'Data' (or pass -- --data.init_args.root DIR, or -- "
                         f"--data.init_args.download true" + (", or run --prefetch on a node with internet)" if
                                                                sweep.offline else ")."))
    # The layout, not only the folder: an incomplete set would otherwise fail in every run, after the sweep started.
    problem = dataset_ready(sweep.dataset, root, train_split)
    if problem is not None:
        download_command = shlex.join([".venv/bin/python", "-m", "polypool.data.download", sweep.dataset, str(root),
                                       "--train-split", train_split])
        where = (f"./reproduce.sh {sweep.dataset} {sweep.config_name} --prefetch on a node with internet" if
                 sweep.offline else f"{download_command} (or ./reproduce.sh {sweep.dataset} {sweep.config_name} "
                                    f"--prefetch)")
        raise SweepError(f"the {sweep.dataset} data in {root} is incomplete, so every run would fail: {problem}\n"
                         f"  fix: restore the missing part, or move {root} away and download the set: {where}; or "
                         f"pass -- --data.init_args.root DIR")


# -- running ------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    run: Run
    ok: bool
    seconds: float
    gpus: int
    returncode: Optional[int] = None
    message: str = ""


def run_env(sweep: Sweep) -> dict[str, str]:
    """The environment of every run: the weights are in the cache by now, so the hub is not asked again."""
    env = dict(os.environ)
    env.update(OFFLINE_ENV)
    if sweep.offline:
        env["WANDB_MODE"] = "offline"
    return env


def _copy_output(source_fd: int, sinks: list) -> None:
    while True:
        try:
            chunk = os.read(source_fd, 65536)
        except OSError:  # a pty's end (EIO)
            break
        if not chunk:
            break
        for sink in sinks:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                pass
    os.close(source_fd)


class LocalProcess:
    """One run's ``python -m polypool fit``; its output goes to ``train.log`` (appended: a resumed run keeps the
    earlier attempts'), and also to this terminal when ``echo`` (one run at a time). On a terminal the run gets a
    pseudo-terminal, so that it draws its progress bar. The run is a session of its own (a Ctrl+C reaches the sweep,
    which stops it: :meth:`stop`); ``pass_fds``: descriptors it holds too (its folder's lock)."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, echo: bool,
                 pass_fds: Sequence[int] = ()):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log_file = open(log, "ab")
        self.log_file.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
        self.log_file.flush()
        self.thread = None
        if echo:
            tty = sys.stdout.isatty()
            if tty:
                import fcntl
                import pty
                import termios

                import struct

                master, slave = pty.openpty()
                rows, cols = 40, 120  # a terminal that reports no size (e.g. under script(1)): the bar needs one
                try:
                    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(sys.stdout.fileno(), termios.TIOCGWINSZ,
                                                                         b"\0" * 8))
                except OSError:
                    pass
                try:
                    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows or 40, cols or 120, 0, 0))
                except OSError:
                    pass
                self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                                                stderr=slave, start_new_session=True, pass_fds=pass_fds)
                os.close(slave)
                source = master
            else:
                self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, start_new_session=True,
                                                pass_fds=pass_fds)
                source = os.dup(self.process.stdout.fileno())
                self.process.stdout.close()
            sys.stdout.flush()
            self.thread = threading.Thread(target=_copy_output, args=(source, [sys.stdout.buffer, self.log_file]),
                                           daemon=True)
            self.thread.start()
        else:
            self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)

    def poll(self) -> Optional[int]:
        code = self.process.poll()
        if code is not None:
            self.close()
        return code

    def close(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=10)
            self.thread = None
        if not self.log_file.closed:
            self.log_file.close()

    def stop(self, timeout: float = 30.0, signalled: bool = False) -> Optional[str]:
        """SIGTERM (the run saves ``last.ckpt`` and ends; ``signalled``: already sent), SIGKILL to its process group
        after ``timeout`` s (:func:`polypool.stopping.stop_process`); returns how it ended (None: it had ended)."""
        how = stop_process(self.process, timeout, signalled=signalled)
        self.close()
        return how


def gpu_slots(sweep: Sweep) -> list[Optional[str]]:
    """One ``CUDA_VISIBLE_DEVICES`` value per worker (within the one this sweep was given), None on the CPU."""
    if not sweep.gpus_per_run:
        return [None] * sweep.workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(sweep.gpus)]
    ids = ids[:sweep.gpus]
    k = sweep.gpus_per_run
    return [",".join(ids[i * k:(i + 1) * k]) for i in range(sweep.workers)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


_Stop = Stopped  # SIGTERM/SIGINT (polypool.stopping)
_raise_stop = raise_stopped


def run_lock(run: Run) -> FolderLock:
    """The lock of ``run``'s folder (``<logdir>/run.lock``), held by the sweep and the run's process while it
    trains: a run left training by a sweep killed with ``kill -9`` keeps it, and is not started twice."""
    return FolderLock(run.logdir / "run.lock", f"the folder of the run {run.name}, {run.logdir}")


def print_progress(statuses: list[RunStatus], say=print) -> None:
    for status in statuses:
        say(f"   {status.line()}")


def run_local(sweep: Sweep, todo: list[tuple[Run, bool]], say=print, poll_s: float = 60.0) -> list[Outcome]:
    """Train ``todo`` (run, resume) with ``sweep.workers`` processes side by side; a new run starts whenever one
    ends. SIGTERM/SIGINT stop every run (each saves its last checkpoint and ends, or is killed after 30 s) and
    re-raise as :class:`_Stop`. Each run holds its folder's lock (:func:`run_lock`) with the sweep; a run whose
    folder another process holds (a run left training by a sweep killed with ``kill -9``) is left alone."""
    slots = gpu_slots(sweep)
    env = run_env(sweep)
    threads = None
    if sweep.workers > 1 and not sweep.gpus_per_run and "OMP_NUM_THREADS" not in os.environ:
        threads = str(max(1, (os.cpu_count() or 1) // sweep.workers))
    queue = deque(todo)
    active: dict[int, tuple[Run, LocalProcess, float]] = {}
    outcomes: list[Outcome] = []
    echo = sweep.workers == 1
    last_summary = time.time()
    locks: dict[Run, FolderLock] = {}
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while queue or active:
            for slot in range(len(slots)):
                if slot in active or not queue:
                    continue
                run, resume = queue.popleft()
                try:
                    locks[run] = run_lock(run).acquire(say=lambda line: say(f"== {run.name}: {line}"))
                except LockHeld as held:
                    say(f"== {run.name}: left alone, another process trains it: {held}")
                    continue
                run_env_ = dict(env)
                if slots[slot] is not None:
                    run_env_["CUDA_VISIBLE_DEVICES"] = slots[slot]
                    if sweep.gpus_per_run > 1 and sweep.workers > 1:
                        run_env_["MASTER_PORT"] = str(_free_port())  # DDP runs side by side: one port each
                if threads:
                    run_env_["OMP_NUM_THREADS"] = threads
                where = f" on GPU {slots[slot]}" if slots[slot] is not None else ""
                say(f"== {run.name}{': resuming from ' + str(run.last_ckpt) if resume else ''}{where}"
                    f"{'' if echo else f' (log: {run.log})'}")
                process = LocalProcess(sweep.fit_command(run, resume), run_env_, run.log, echo,
                                       pass_fds=locks[run].fds)
                locks[run].note(child=process.process.pid, child_command=f"polypool fit, {run.name}")
                run.write_state("running", pid=process.process.pid, host=socket.gethostname(),
                                log=str(run.log), gpus=slots[slot])
                active[slot] = (run, process, time.time())
            for slot, (run, process, started) in list(active.items()):
                code = process.poll()
                if code is None:
                    continue
                del active[slot]
                locks.pop(run).release()
                seconds = time.time() - started
                ok = code == 0 and run.record.is_file()
                if ok:
                    run.write_state("finished", returncode=code, log=str(run.log), seconds=seconds)
                    say(f"== {run.name}: finished in {seconds:.0f} s ({run.record})")
                else:
                    run.write_state("failed", returncode=code, log=str(run.log), seconds=seconds)
                    say(f"== {run.name}: FAILED (exit {code}); log: {run.log}")
                outcomes.append(Outcome(run, ok, seconds, sweep.gpus_per_run, code))
            if active and not echo and time.time() - last_summary >= poll_s:
                last_summary = time.time()
                say(f"-- {time.strftime('%H:%M:%S')}: {len(active)} running, {len(queue)} waiting, "
                    f"{len(outcomes)} ended")
                print_progress([inspect_run(run) for run, _, _ in active.values()], say)
            time.sleep(0.2)
    except _Stop:
        for run, process, started in active.values():  # all at once: each saves its checkpoint meanwhile
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        for run, process, started in active.values():
            how = process.stop(signalled=True)
            if how == "killed":
                say(f"== {run.name}: did not end within 30 s of SIGTERM and was killed; its last checkpoint is the "
                    f"one before")
            run.write_state("interrupted", log=str(run.log))
            outcomes.append(Outcome(run, False, time.time() - started, sweep.gpus_per_run, None, "interrupted"))
        raise
    finally:
        for lock in locks.values():
            lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return outcomes


@dataclass
class JobSpec:
    """What one submitit job runs: the fit command of one run, in ``cwd``, with ``env`` added."""

    command: list[str]
    cwd: str
    env: dict[str, str]
    log: str
    state_file: str
    gpus: int


def run_job(spec: JobSpec) -> dict[str, Any]:
    """A submitit job's function: run the fit command (one task per GPU: Lightning's SLURM environment makes the
    tasks the DDP ranks), its output into the run's ``train.log`` (other ranks: ``train.rank<N>.log``), its state
    into ``sweep.json``. Raises if the run fails, so that SLURM/submitit mark the job failed."""
    rank = 0
    try:
        import submitit

        rank = submitit.JobEnvironment().global_rank
    except Exception:  # noqa: BLE001 - outside a submitit job
        pass
    log = Path(spec.log) if rank == 0 else Path(spec.log).with_name(f"train.rank{rank}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    state_file = Path(spec.state_file)
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_JOB_ID") or ""

    def write_state(state: str, **values: Any) -> None:
        if rank == 0:
            state_file.write_text(json.dumps({"state": state, "time": time.time(), "log": spec.log,
                                              "slurm_job": job_id, **values}) + "\n")

    start = time.time()
    with open(log, "ab") as out:
        out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} job {job_id}: {shlex.join(spec.command)}\n".encode())
        out.flush()
        problem = gpu_problem(spec.gpus) if spec.gpus else None
        if problem:
            out.write(f"{PROG}: {problem}\n".encode())
            write_state("failed", returncode=1, host=socket.gethostname())
            raise RuntimeError(f"{problem}\nlog: {log}")
        process = subprocess.Popen(spec.command, cwd=spec.cwd, env={**os.environ, **spec.env},
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        write_state("running", pid=process.pid, host=socket.gethostname())
        code = process.wait()
    seconds = time.time() - start
    if code:
        write_state("failed", returncode=code, seconds=seconds)
        raise RuntimeError(f"the run exited with {code}; log: {log}")
    write_state("finished", returncode=0, seconds=seconds)
    return {"returncode": code, "seconds": seconds}


def make_executor(sweep: Sweep, args: argparse.Namespace):
    try:
        import submitit
    except ImportError:
        raise SweepError("--slurm needs submitit: make setup (or pip install submitit)") from None
    folder = sweep.out / "slurm" / sweep.dataset / sweep.config_name / "%j"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=args.slurm_cluster)
    except RuntimeError as error:  # submitit's SlurmExecutor: no srun on PATH
        raise SweepError(f"--slurm: no SLURM on this node ({error}): run on a node that has SLURM's commands (the "
                         f"cluster's login node), or test the jobs here with --slurm-cluster local") from error
    gpus = sweep.gpus_per_run
    params: dict[str, Any] = {"name": f"polypool-{sweep.dataset}-{sweep.config_name}", "timeout_min": args.time,
                              "nodes": 1, "tasks_per_node": max(gpus, 1), "gpus_per_node": gpus,
                              "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb,
                              "slurm_partition": args.partition, "slurm_account": args.account,
                              "slurm_qos": args.qos}
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, ValueError, AssertionError) as error:
        raise SweepError(f"submitit rejected the job options: {error}", 2) from error
    return executor


def run_slurm(sweep: Sweep, todo: list[tuple[Run, bool]], args: argparse.Namespace, say=print) -> list[Outcome]:
    """Submit one job per run (submitit), wait for them, print their states every ``--poll-s`` seconds."""
    executor = make_executor(sweep, args)
    env = {k: v for k, v in run_env(sweep).items() if k in OFFLINE_ENV or k == "WANDB_MODE"}
    jobs = []
    for run, resume in todo:
        spec = JobSpec(sweep.fit_command(run, resume), os.getcwd(), env, str(run.log), str(run.state_file),
                       sweep.gpus_per_run)
        run.logdir.mkdir(parents=True, exist_ok=True)
        job = executor.submit(run_job, spec)
        state = {"slurm_job": str(job.job_id), "log": str(run.log), "submitit_log": str(job.paths.stdout)}
        if args.slurm_cluster == "local":  # the job's process is on this host
            state.update(pid=int(job.job_id), host=socket.gethostname())
        run.write_state("submitted", **state)
        say(f"== {run.name}{' (resuming)' if resume else ''}: submitted job {job.job_id} (log: {run.log})")
        jobs.append((run, job, time.time()))
    outcomes = []
    pending = list(jobs)
    last_summary = time.time()
    while pending:
        time.sleep(min(2.0, args.poll_s))
        for item in list(pending):
            run, job, submitted = item
            if not job.done():
                continue
            pending.remove(item)
            try:
                result = job.result()
                ok = run.record.is_file()
                seconds = float(result.get("seconds", time.time() - submitted))
                say(f"== {run.name}: job {job.job_id} finished in {seconds:.0f} s ({run.record})" if ok else
                    f"== {run.name}: job {job.job_id} ended without a record; log: {run.log}")
                message = ""
            except Exception as error:  # noqa: BLE001 - submitit's FailedJobError, UncompletedJobError
                ok, seconds = False, time.time() - submitted
                message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                if run.read_state().get("state") != "failed":
                    run.write_state("failed", slurm_job=str(job.job_id), log=str(run.log),
                                    submitit_log=str(job.paths.stdout))
                say(f"== {run.name}: job {job.job_id} FAILED ({message}); log: {run.log}, submitit's: "
                    f"{job.paths.stdout}")
            outcomes.append(Outcome(run, ok, seconds, sweep.gpus_per_run, None, message))
        if pending and time.time() - last_summary >= args.poll_s:
            last_summary = time.time()
            say(f"-- {time.strftime('%H:%M:%S')}: {len(pending)} job(s) pending or running")
            print_progress([inspect_run(run) for run, _, _ in pending], say)
    return outcomes


# -- the table and the views --------------------------------------------------------------------------------------
def plan(sweep: Sweep) -> list[RunStatus]:
    max_steps = sweep.max_steps()
    return [inspect_run(run, max_steps) for run in sweep.runs()]


def completeness(statuses: list[RunStatus]) -> str:
    counts = {state: sum(s.state == state for s in statuses) for state in STATES}
    rest = ", ".join(f"{counts[state]} {state}" for state in STATES[1:])
    return f"{counts['done']}/{len(statuses)} runs done ({rest})"


def print_status(sweep: Sweep, say=print) -> list[RunStatus]:
    statuses = plan(sweep)
    say(f"{sweep.dataset}/{sweep.config_name} ({sweep.config}), results in {sweep.out}")
    say(STATUS_HEADER)
    for status in statuses:
        say(status.line())
    table = sweep.table_stem.with_suffix(".md")
    built = f"{table} (built {time.strftime('%Y-%m-%d %H:%M', time.localtime(table.stat().st_mtime))})" \
        if table.is_file() else f"{table} (not built yet)"
    say(f"table {sweep.table_stem.name}: {completeness(statuses)}; {built}")
    return statuses


def build_table(sweep: Sweep, failed: list[RunStatus], trained: Sequence[Run] = ()) -> None:
    """``python -m polypool.tables`` over the sweep's records; the table names the runs ``trained`` now, and a
    --quick table shows the committed reference (:data:`polypool.quick.REFERENCE`) apart from the user's rows."""
    from .quick import REFERENCE

    command = [sys.executable, "-m", "polypool.tables", "--runs", str(sweep.runs_root), "--dataset", sweep.dataset,
               "--backbone", sweep.config_name, "--out", str(sweep.table_stem),
               "--trained", ",".join(run.name for run in trained)]
    if sweep.quick:
        command.append("--quick")
        reference = REFERENCE / "runs"
        if reference.is_dir() and reference.resolve() != sweep.runs_root.resolve():
            command += ["--reference", str(reference)]
    if failed:
        command += ["--note", "Failed runs (shown as -): " + ", ".join(
            f"{s.run.name} (log: {s.run.log_path()})" for s in failed) + "."]
    try:
        code = run_child(command)
    except Stopped as stop:
        stop.left = (f"while building the table {sweep.table_stem.with_suffix('.md')}: the runs' records are kept; "
                     f"run the same command again to build it (nothing is trained again)")
        raise
    if code:
        raise SweepError(f"the table could not be built: {shlex.join(command)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args, extra)
    except SweepError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.code


def sweep_lock(sweep: Sweep) -> FolderLock:
    """The lock of a sweep's output folder for its config (``OUT/<dataset>_<config>.lock``, beside its table): one
    sweep of a config per output folder at a time (another config's may share the folder)."""
    return FolderLock(sweep.table_stem.with_suffix(".lock"),
                      f"the output folder {sweep.out} of {sweep.dataset}/{sweep.config_name}")


def _main(args: argparse.Namespace, extra: list[str]) -> int:
    start = time.time()
    sweep = make_sweep(args, extra)
    if args.status:
        print_status(sweep)
        return 0
    with stop_on_signals():
        try:
            return _run(args, sweep, start)
        except Stopped as stop:
            left = stop.left or "run the same command again to go on"
            print(f"{PROG}: stopped ({stop.signal}){'' if left[:1] in ';:,' else ' '}{left}", file=sys.stderr,
                  flush=True)
            return stop.code


def _run(args: argparse.Namespace, sweep: Sweep, start: float) -> int:
    """:func:`_main` after the arguments, SIGTERM/SIGINT raising :class:`Stopped` (each step that starts a child
    stops it and says what it left in :attr:`Stopped.left`). A sweep that trains holds :func:`sweep_lock` (a second
    one on the same folder and config stops at once, naming the first), and ``--quick`` the data folder's
    (:func:`polypool.quick.prepare`: a second sweep with another --out waits for the first's pre-training)."""
    if args.gpus and not args.slurm and not args.prefetch:
        problem = gpu_problem(args.gpus)
        if problem:
            raise SweepError(problem)
    if args.prefetch:
        prepare_data(sweep, prefetch=True)
        ensure_weights(sweep.values(), offline=False)
        print(f"{PROG}: prefetch done: the runs of {sweep.dataset}/{sweep.config_name} find their data and weights "
              f"(run them with --offline on a node without internet)")
        return 0
    lock = sweep_lock(sweep)
    try:
        lock.acquire()
    except LockHeld as held:
        holder = held.holder
        stop_it = (f"stop it (kill {holder['pid']}: its runs keep their last checkpoints) or " if
                   holder.get("pid") and holder.get("host") == socket.gethostname() else "")
        raise SweepError(f"another sweep of {sweep.dataset}/{sweep.config_name} is using {sweep.out}: "
                         f"{describe_holder(holder)} (lock file {lock.path}). Wait for it to end, or {stop_it}"
                         f"give this one another --out DIR; --status shows its runs") from None
    try:
        note = lock.takeover_note()
        if note:
            print(f"== {note}")
        return _train(args, sweep, start)
    finally:
        lock.release()


def _train(args: argparse.Namespace, sweep: Sweep, start: float) -> int:
    statuses = plan(sweep)
    todo = runs_to_train(statuses)
    if todo:
        # the data, the quick pre-training and the weights only when a run will use them
        prepare_data(sweep)
        try:
            ensure_weights(sweep.values(), sweep.offline, say=lambda line: print(f"== {line}"))
        except Stopped as stop:
            stop.left = "while fetching the pretrained weights: run the same command again to fetch them"
            raise
        mode = (f"as {len(todo)} job(s) ({args.slurm_cluster})" if args.slurm else
                f"{sweep.workers} at a time" + (f", {sweep.gpus_per_run} GPU(s) each" if sweep.gpus_per_run else
                                                 " on the CPU"))
        print(f"== {len(todo)} run(s) to train, {mode}")
    else:
        print(f"== every run of {sweep.dataset}/{sweep.config_name} has its record in {sweep.runs_root}: nothing to "
              f"train (delete a record, or pass --out DIR, to train it again); rebuilding the table from them")
    try:
        outcomes = run_slurm(sweep, todo, args) if args.slurm else run_local(sweep, todo, poll_s=args.poll_s)
    except Stopped as stop:
        stop.left = ("while waiting for the submitted jobs: they go on in SLURM's queue (scancel stops them); run the "
                     "same command again to wait for them (they are not submitted twice)" if args.slurm else
                     "; every run keeps its last checkpoint: run the same command again to resume them")
        raise

    statuses = plan(sweep)
    failed = [s for s in statuses if s.state == "failed"]
    waiting = [s for s in statuses if s.state == "running"]
    trained = [o for o in outcomes if o.seconds]
    build_table(sweep, failed, [o.run for o in trained if o.ok])
    gpu_hours = sum(o.seconds * o.gpus for o in trained) / 3600
    table = sweep.table_stem.with_suffix(".md")
    print(f"{PROG}: done in {time.time() - start:.0f} s; {len(trained)} run(s) trained, "
          f"{gpu_hours:.2f} GPU-hours" + (" (CPU)" if not sweep.gpus_per_run else "")
          + f"; table: {table} ({completeness(statuses)})")
    if waiting:
        print(f"{PROG}: {len(waiting)} run(s) still running elsewhere; run again when they end to complete the "
              f"table", file=sys.stderr)
    if failed:
        lines = "\n".join(f"  {s.run.name}: {s.detail or 'failed'}; log: {s.run.log_path()}" for s in failed)
        print(f"{PROG}: {len(failed)} run(s) failed:\n{lines}\nrun the same command again to retry them (from "
              f"their last checkpoint)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
