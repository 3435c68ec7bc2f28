"""Runs as SLURM jobs through submitit (``--slurm``): one job array for the runs to train (``executor.batch()``, at
most ``slurm_array_parallelism`` of them at a time: all of them), each job one run (:class:`FitJob`), waited for with
a status line every ``--poll-s`` seconds.

A job that reaches its time limit is requeued (:class:`FitJob` is a ``submitit.helpers.Checkpointable``: submitit
signals it before the limit and submits it again): the run saves ``last.ckpt`` when SLURM stops it (SIGTERM:
:class:`polypool.cli.SignalCheckpoint`, else its periodic ``last.ckpt``), and the requeued job resumes from there
(``--ckpt_path last``), so a long run is no longer ended by a 12-hour limit. ``--slurm-cluster local`` runs the same
jobs on this machine (submitit's local executor), for testing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import spec
from .config import PROG, Sweep, SweepError
from .local import Outcome, run_env
from .preflight import gpu_problem
from .runs import Run
from .status import inspect_run, print_progress

try:
    from submitit.helpers import Checkpointable
except ImportError:  # submitit is a dependency; without it --slurm says how to get it (make_executor)
    Checkpointable = object


@dataclass
class JobSpec:
    """What one submitit job runs: the fit command of one run, in ``cwd``, with ``env`` added; ``last_ckpt``: the
    run's ``last.ckpt`` (a job that finds it, requeued after its time limit, resumes from it)."""

    command: list[str]
    cwd: str
    env: dict[str, str]
    log: str
    state_file: str
    gpus: int
    last_ckpt: str = ""

    def resumed_command(self) -> list[str]:
        """The command, resuming from ``last_ckpt`` when it is there and the command does not say where from."""
        if self.last_ckpt and Path(self.last_ckpt).is_file() and "--ckpt_path" not in self.command:
            return [*self.command, "--ckpt_path", "last"]
        return list(self.command)


def run_job(spec_: JobSpec) -> dict[str, Any]:
    """A submitit job's function: run the fit command (one task per GPU: Lightning's SLURM environment makes the
    tasks the DDP ranks), its output into the run's ``train.log`` (other ranks: ``train.rank<N>.log``), its state
    into ``sweep.json``. Raises if the run fails, so that SLURM/submitit mark the job failed."""
    rank = 0
    try:
        import submitit

        rank = submitit.JobEnvironment().global_rank
    except Exception:
        pass
    log = Path(spec_.log) if rank == 0 else Path(spec_.log).with_name(f"train.rank{rank}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_JOB_ID") or ""
    command = spec_.resumed_command()

    def write_state(state: str, **values: Any) -> None:
        if rank == 0:
            spec.write_state(spec_.state_file, state, log=spec_.log, slurm_job=job_id, **values)

    start = time.time()
    with open(log, "ab") as out:
        out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} job {job_id}: {shlex.join(command)}\n".encode())
        out.flush()
        problem = gpu_problem(spec_.gpus) if spec_.gpus else None
        if problem:
            out.write(f"{PROG}: {problem}\n".encode())
            write_state("failed", returncode=1, host=socket.gethostname())
            raise RuntimeError(f"{problem}\nlog: {log}")
        process = subprocess.Popen(
            command,
            cwd=spec_.cwd,
            env={**os.environ, **spec_.env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        write_state("running", pid=process.pid, host=socket.gethostname())
        code = process.wait()
    seconds = time.time() - start
    if code:
        write_state("failed", returncode=code, seconds=seconds)
        raise RuntimeError(f"the run exited with {code}; log: {log}")
    write_state("finished", returncode=0, seconds=seconds)
    return {"returncode": code, "seconds": seconds}


class FitJob(Checkpointable):
    """The job of one run (:func:`run_job`). Checkpointable: at its time limit (or a preemption) submitit submits it
    again with the same :class:`JobSpec`, and the new job resumes from the run's ``last.ckpt``."""

    def __call__(self, spec_: JobSpec) -> dict[str, Any]:
        return run_job(spec_)


def make_executor(sweep: Sweep, args: argparse.Namespace):
    try:
        import submitit
    except ImportError:
        raise SweepError("--slurm needs submitit: make setup (or pip install submitit)") from None
    folder = sweep.out / "slurm" / sweep.dataset / sweep.config_name / "%j"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=args.slurm_cluster)
    except RuntimeError as error:  # submitit's SlurmExecutor: no srun on PATH
        raise SweepError(
            f"--slurm: no SLURM on this node ({error}): run on a node that has SLURM's commands (the "
            f"cluster's login node), or test the jobs here with --slurm-cluster local"
        ) from error
    gpus = sweep.gpus_per_run
    params: dict[str, Any] = {
        "name": f"polypool-{sweep.dataset}-{sweep.config_name}",
        "timeout_min": args.time,
        "nodes": 1,
        "tasks_per_node": max(gpus, 1),
        "gpus_per_node": gpus,
        "cpus_per_task": args.cpus_per_task,
        "mem_gb": args.mem_gb,
        "slurm_partition": args.partition,
        "slurm_account": args.account,
        "slurm_qos": args.qos,
    }
    try:
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    except (NameError, ValueError, AssertionError) as error:
        raise SweepError(f"submitit rejected the job options: {error}", 2) from error
    return executor


def run_slurm(sweep: Sweep, todo: list[tuple[Run, bool]], args: argparse.Namespace, say=print) -> list[Outcome]:
    """Submit the runs as one job array (submitit; a job each), wait for them, print their states every
    ``--poll-s`` seconds."""
    executor = make_executor(sweep, args)
    env = {k: v for k, v in run_env(sweep).items() if k in spec.OFFLINE_ENV or k == "WANDB_MODE"}
    specs = []
    for run, resume in todo:
        specs.append(
            JobSpec(
                sweep.fit_command(run, resume),
                os.getcwd(),
                env,
                str(run.log),
                str(run.state_file),
                sweep.gpus_per_run,
                str(run.last_ckpt),
            )
        )
        run.logdir.mkdir(parents=True, exist_ok=True)
    if not todo:
        return []
    executor.update_parameters(slurm_array_parallelism=len(todo))  # the whole array at once, as SLURM allows
    before = time.time()
    with executor.batch():  # one job array (SLURM), the job ids known once it is submitted
        submitted = [executor.submit(FitJob(), job_spec) for job_spec in specs]
    jobs = []
    for (run, resume), job in zip(todo, submitted):
        state = {"slurm_job": str(job.job_id), "log": str(run.log), "submitit_log": str(job.paths.stdout)}
        if args.slurm_cluster == "local":  # the job's process is on this host
            state.update(pid=int(job.job_id), host=socket.gethostname())
        if float(run.read_state().get("time") or 0) < before:  # unless the job has already said how it is
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
                say(
                    f"== {run.name}: job {job.job_id} finished in {seconds:.0f} s ({run.record})"
                    if ok
                    else f"== {run.name}: job {job.job_id} ended without a record; log: {run.log}"
                )
                message = ""
            except Exception as error:
                ok, seconds = False, time.time() - submitted
                message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
                if run.read_state().get("state") != "failed":
                    run.write_state(
                        "failed", slurm_job=str(job.job_id), log=str(run.log), submitit_log=str(job.paths.stdout)
                    )
                say(
                    f"== {run.name}: job {job.job_id} FAILED ({message}); log: {run.log}, submitit's: "
                    f"{job.paths.stdout}"
                )
            outcomes.append(Outcome(run, ok, seconds, sweep.gpus_per_run, None, message))
        if pending and time.time() - last_summary >= args.poll_s:
            last_summary = time.time()
            say(f"-- {time.strftime('%H:%M:%S')}: {len(pending)} job(s) pending or running")
            print_progress([inspect_run(run) for run, _, _ in pending], say)
    return outcomes
