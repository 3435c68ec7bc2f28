"""The runs of a table and how they are run: ``reproduce.sh`` is a thin entry point to :func:`main`.

A table is every pooling row (:data:`polypool.repro.spec.POOLINGS`) x seeds of one config
(``configs/<dataset>/<config>.yaml``, in the repository ``--repo``, default the current directory). Each run has its
own folder and, once finished, its record (:mod:`polypool.repro.runs`, paths: :mod:`polypool.repro.spec`).

:func:`plan` says what each run is (:func:`polypool.repro.status.inspect_run`: done, running, failed, partial or
missing). The runs to do are then trained by a local pool of ``--workers`` processes (:mod:`polypool.repro.local`)
or submitted as a SLURM job array through submitit (:mod:`polypool.repro.slurm`); a failed run does not stop the
others. The table is rebuilt in this process (:func:`polypool.repro.tables.build`) when they end; the exit status is
1 if a run failed, with the list.

Before anything starts (:mod:`polypool.repro.preflight`): ``--gpus N`` checks that torch sees N GPUs; the data
(download or the generated quick set) and the pretrained weights of the config are fetched once, here, or, with
``--offline``, checked; ``--prefetch`` only does that (on a login node) and exits. The config is read as the runs
will read it, by LightningCLI's own parser (:func:`polypool.repro.config.read_config`).

Signals and locks (issue 32, sections 1 and 2). SIGTERM and SIGINT stop the sweep at any stage
(:mod:`polypool.repro.stopping`): every child it started (each in a session of its own) gets SIGTERM, a run or the
quick pre-training saves its ``last.ckpt`` and ends (killed after 30 s), and the sweep says what was left and how to
go on, exiting 143 (SIGTERM) or 130 (SIGINT). A sweep that trains holds ``OUT/<dataset>_<config>.lock``
(:func:`sweep_lock`; :mod:`polypool.repro.locking`): a second sweep of the same config and folder stops at once,
naming the first (pid, host, start time, command); each run holds ``<logdir>/run.lock`` with its process
(:func:`polypool.repro.local.run_lock`), and ``--quick``'s data folder ``quick.lock`` while the set and the
pre-training are made (a sweep with another --out waits for it).
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Sequence
from typing import Optional

from . import spec, tables
from .config import (
    PROG,
    QUICK_WORKERS,
    Sweep,
    SweepError,
    build_parser,
    get,
    make_sweep,
    parse_time_minutes,
    quick_network,
    read_config,
    resolve_config,
)
from .local import LocalProcess, Outcome, gpu_slots, run_env, run_local, run_lock
from .locking import FolderLock, LockHeld, describe_holder
from .preflight import (
    TORCH_CUDA_FLAVOURS,
    WeightNeed,
    dataset_ready,
    ensure_weights,
    fetch_weight,
    flavour_for,
    gpu_problem,
    nvidia_smi,
    prepare_data,
    quick_data,
    weight_needs,
)
from .runs import STATES, Run
from .slurm import FitJob, JobSpec, make_executor, run_job, run_slurm
from .spec import OFFLINE_ENV, POOLINGS
from .status import (
    DONE_RECORD_KEYS,
    HEARTBEAT_S,
    STATUS_HEADER,
    RunStatus,
    completeness,
    inspect_run,
    is_alive,
    print_progress,
    runs_to_train,
    set_aside_damaged_record,
)
from .stopping import Stopped, stop_on_signals

__all__ = [
    "DONE_RECORD_KEYS",
    "HEARTBEAT_S",
    "OFFLINE_ENV",
    "POOLINGS",
    "PROG",
    "QUICK_WORKERS",
    "STATES",
    "STATUS_HEADER",
    "TORCH_CUDA_FLAVOURS",
    "FitJob",
    "JobSpec",
    "LocalProcess",
    "Outcome",
    "Run",
    "RunStatus",
    "Sweep",
    "SweepError",
    "WeightNeed",
    "build_parser",
    "build_table",
    "completeness",
    "dataset_ready",
    "ensure_weights",
    "fetch_weight",
    "flavour_for",
    "get",
    "gpu_problem",
    "gpu_slots",
    "inspect_run",
    "is_alive",
    "main",
    "make_executor",
    "make_sweep",
    "nvidia_smi",
    "parse_time_minutes",
    "plan",
    "prepare_data",
    "print_progress",
    "print_status",
    "quick_data",
    "quick_network",
    "read_config",
    "resolve_config",
    "run_env",
    "run_job",
    "run_local",
    "run_lock",
    "run_slurm",
    "runs_to_train",
    "set_aside_damaged_record",
    "sweep_lock",
    "weight_needs",
]


def plan(sweep: Sweep) -> list[RunStatus]:
    max_steps = sweep.max_steps()
    return [inspect_run(run, max_steps) for run in sweep.runs()]


def print_status(sweep: Sweep, say=print) -> list[RunStatus]:
    statuses = plan(sweep)
    say(f"{sweep.dataset}/{sweep.config_name} ({sweep.config}), results in {sweep.out}")
    say(STATUS_HEADER)
    for status in statuses:
        say(status.line())
    table = sweep.table_stem.with_suffix(".md")
    built = (
        f"{table} (built {time.strftime('%Y-%m-%d %H:%M', time.localtime(table.stat().st_mtime))})"
        if table.is_file()
        else f"{table} (not built yet)"
    )
    say(f"table {sweep.table_stem.name}: {completeness(statuses)}; {built}")
    return statuses


def build_table(sweep: Sweep, failed: list[RunStatus], trained: Sequence[Run] = ()) -> None:
    """The table of the sweep's records (:func:`polypool.repro.tables.build`, in this process); it names the runs
    ``trained`` now, and a --quick table shows the committed reference (:data:`polypool.repro.spec.REFERENCE`) apart
    from the user's rows."""
    reference = None
    if sweep.quick:
        committed = sweep.repo / spec.REFERENCE / spec.RUNS
        if committed.is_dir() and committed.resolve() != sweep.runs_root.resolve():
            reference = committed
    note = (
        "Failed runs (shown as -): " + ", ".join(f"{s.run.name} (log: {s.run.log_path()})" for s in failed) + "."
        if failed
        else ""
    )
    try:
        text = tables.build(
            sweep.runs_root,
            sweep.dataset,
            sweep.config_name,
            sweep.table_stem,
            note,
            sweep.quick,
            reference,
            ",".join(run.name for run in trained),
            repo=sweep.repo,
        )
    except Stopped as stop:
        stop.left = (
            f"while building the table {sweep.table_stem.with_suffix('.md')}: the runs' records are kept; "
            f"run the same command again to build it (nothing is trained again)"
        )
        raise
    except Exception as error:
        raise SweepError(
            f"the table {sweep.table_stem.with_suffix('.md')} could not be built from "
            f"{sweep.runs_root}: {type(error).__name__}: {error}"
        ) from error
    print(text, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
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
    return FolderLock(
        sweep.table_stem.with_suffix(".lock"), f"the output folder {sweep.out} of {sweep.dataset}/{sweep.config_name}"
    )


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
            print(
                f"{PROG}: stopped ({stop.signal}){'' if left[:1] in ';:,' else ' '}{left}", file=sys.stderr, flush=True
            )
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
        print(
            f"{PROG}: prefetch done: the runs of {sweep.dataset}/{sweep.config_name} find their data and weights "
            f"(run them with --offline on a node without internet)"
        )
        return 0
    lock = sweep_lock(sweep)
    try:
        lock.acquire()
    except LockHeld as held:
        holder = held.holder
        stop_it = (
            f"stop it (kill {holder['pid']}: its runs keep their last checkpoints) or "
            if holder.get("pid") and holder.get("host") == socket.gethostname()
            else ""
        )
        raise SweepError(
            f"another sweep of {sweep.dataset}/{sweep.config_name} is using {sweep.out}: "
            f"{describe_holder(holder)} (lock file {lock.path}). Wait for it to end, or {stop_it}"
            f"give this one another --out DIR; --status shows its runs"
        ) from None
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
        mode = (
            f"as {len(todo)} job(s) ({args.slurm_cluster})"
            if args.slurm
            else f"{sweep.workers} at a time"
            + (f", {sweep.gpus_per_run} GPU(s) each" if sweep.gpus_per_run else " on the CPU")
        )
        print(f"== {len(todo)} run(s) to train, {mode}")
    else:
        print(
            f"== every run of {sweep.dataset}/{sweep.config_name} has its record in {sweep.runs_root}: nothing to "
            f"train (delete a record, or pass --out DIR, to train it again); rebuilding the table from them"
        )
    try:
        outcomes = run_slurm(sweep, todo, args) if args.slurm else run_local(sweep, todo, poll_s=args.poll_s)
    except Stopped as stop:
        stop.left = (
            "while waiting for the submitted jobs: they go on in SLURM's queue (scancel stops them); run the "
            "same command again to wait for them (they are not submitted twice)"
            if args.slurm
            else "; every run keeps its last checkpoint: run the same command again to resume them"
        )
        raise

    statuses = plan(sweep)
    failed = [s for s in statuses if s.state == "failed"]
    waiting = [s for s in statuses if s.state == "running"]
    trained = [o for o in outcomes if o.seconds]
    build_table(sweep, failed, [o.run for o in trained if o.ok])
    gpu_hours = sum(o.seconds * o.gpus for o in trained) / 3600
    table = sweep.table_stem.with_suffix(".md")
    print(
        f"{PROG}: done in {time.time() - start:.0f} s; {len(trained)} run(s) trained, "
        f"{gpu_hours:.2f} GPU-hours"
        + (" (CPU)" if not sweep.gpus_per_run else "")
        + f"; table: {table} ({completeness(statuses)})"
    )
    if waiting:
        print(
            f"{PROG}: {len(waiting)} run(s) still running elsewhere; run again when they end to complete the table",
            file=sys.stderr,
        )
    if failed:
        lines = "\n".join(f"  {s.run.name}: {s.detail or 'failed'}; log: {s.run.log_path()}" for s in failed)
        print(
            f"{PROG}: {len(failed)} run(s) failed:\n{lines}\nrun the same command again to retry them (from "
            f"their last checkpoint)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
