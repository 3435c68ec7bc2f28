"""The CPU miniature of ``reproduce.sh --quick``: its generated set and the network every pooling starts from.

The paper fine-tunes every pooling from one network, ImageNet's VGG16, trained with max pooling, its pools swapped
before fine-tuning. Without network there are no ImageNet weights here, so the miniature does the same on a small
scale: one VGG16 (with BatchNorm) is trained with max pooling on the generated set first, and every pooling of the
table then fine-tunes from it (``--model.network_weights``, configs/trainer/quick.yaml). That first network is made
once per data folder and shared by every pooling and seed, as ImageNet's weights are.

    python -m polypool.quick DIR            # DIR/VOCdevkit (the set) and DIR/pretrained_max.ckpt
    python -m polypool.quick DIR -- --trainer.max_steps 4   # overrides for the pre-training run

One process prepares a folder at a time (issue 32): :func:`prepare` holds ``DIR/quick.lock``
(:mod:`polypool.repro.locking`), and another one (a second sweep, with another --out) waits for it, then uses what it made
or resumes what it left. The set is generated beside its place and moved there when complete; each child runs in a
session of its own, holding the lock with its parent (a parent killed with ``kill -9`` leaves the folder locked until
its pre-training ends), and is stopped with its parent (SIGTERM/SIGINT: :mod:`polypool.repro.stopping`), the pre-training
saving its ``last.ckpt`` first, so that the next attempt resumes it.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from . import spec
from .locking import FolderLock
from .stopping import Stopped, run_child, stop_on_signals

PRETRAINED = "pretrained_max.ckpt"
LOCK = "quick.lock"  # in the data folder: held while the set and the network are made (prepare)
REFERENCE = spec.REFERENCE  # the committed miniature (polypool.repro.spec)
PRETRAIN_STEPS = 300  # the shared max-pooling network's steps (each pooling's fine-tune: quick.yaml's max_steps)
PRETRAIN_LR = 5e-4  # from random weights; the fine-tunes take quick.yaml's lower lr
CONFIG = str(spec.QUICK_CONFIG)  # configs/voc/vgg.yaml, in the repository (``repo``)
PRESET = str(spec.QUICK_PRESET)  # configs/trainer/quick.yaml


class QuickError(RuntimeError):
    """A step of the miniature's preparation failed; the message names the command and its log."""


def pretrained_path(root: Path) -> Path:
    return Path(root) / PRETRAINED


def _note_child(lock: Optional[FolderLock], what: str):
    """``run_child``'s ``on_start``: the lock file names the child too (for a waiting process's message)."""

    def note(process) -> None:
        if lock is not None:
            lock.note(child=process.pid, child_command=what)

    return note


def make_data(root: Path, lock: Optional[FolderLock] = None) -> None:
    """The generated detail-heavy set (``python -m polypool.data.fixtures voc ROOT --preset quick``), once. It is
    written to ``ROOT/.generating`` and moved to ``ROOT/VOCdevkit`` when complete, so that a stopped generation
    leaves no part that would count as the set."""
    root = Path(root)
    if (root / "VOCdevkit").is_dir():
        return
    partial = root / ".generating"
    shutil.rmtree(partial, ignore_errors=True)  # an earlier, interrupted generation (the lock is ours)
    command = [sys.executable, "-m", "polypool.data.fixtures", "voc", str(partial), "--preset", "quick"]

    def left() -> str:
        shutil.rmtree(partial, ignore_errors=True)
        return (
            f"while generating the quick set in {root}: nothing of it was kept; run the same command again to "
            f"generate it"
        )

    code = run_child(
        command, pass_fds=lock.fds if lock else (), on_start=_note_child(lock, "the quick set's generation"), left=left
    )
    if code:
        raise QuickError(f"generating the quick set failed: {shlex.join(command)}")
    (partial / "VOCdevkit").replace(root / "VOCdevkit")
    shutil.rmtree(partial, ignore_errors=True)


def pretrain_overrides(overrides: Sequence[str]) -> list[str]:
    """The runs' overrides that apply to the pre-training too: all but extra callbacks (``--trainer.callbacks+=X``
    or ``--trainer.callbacks X``), which belong to the runs."""
    kept, skip = [], False
    for arg in overrides:
        if skip:
            skip = False
        elif arg.startswith("--trainer.callbacks"):
            skip = "=" not in arg
        else:
            kept.append(arg)
    return kept


def pretrain_steps(overrides: Sequence[str] = ()) -> str:
    """The pre-training's steps: :data:`PRETRAIN_STEPS`, unless ``overrides`` set ``--trainer.max_steps N`` (or
    ``--trainer.max_steps=N``); the last one wins, as it does on the command line."""
    steps, overrides = str(PRETRAIN_STEPS), pretrain_overrides(overrides)
    for i, arg in enumerate(overrides):
        if arg == "--trainer.max_steps" and i + 1 < len(overrides):
            steps = overrides[i + 1]
        elif arg.startswith("--trainer.max_steps="):
            steps = arg.split("=", 1)[1]
    return steps


def pretrain_command(root: Path, resume: bool, overrides: Sequence[str] = (), repo: Path = Path(".")) -> list[str]:
    """The max-pooling run every pooling fine-tunes from: the quick preset from random weights, longer;
    ``overrides`` (:func:`pretrain_overrides`) come last, so a test can make it tiny. ``repo``: where configs/ is."""
    folder = Path(root) / "pretrain"
    repo = Path(repo)
    return spec.fit_command(
        [repo / CONFIG, repo / PRESET],
        [
            ("data.init_args.root", root),
            ("model.pooling", "max"),
            ("model.network_weights", "null"),
            ("trainer.max_steps", PRETRAIN_STEPS),
            ("model.lr", PRETRAIN_LR),
            ("trainer.default_root_dir", folder),
            ("records_root", folder / spec.RUNS),
            ("experiment", "pretrain"),
            ("wandb_project", "null"),
            ("seed_everything", 0),
        ],
        resume,
        pretrain_overrides(overrides),
    )


def checkpoint_step(path: Path) -> Optional[int]:
    """The global step a Lightning checkpoint holds (its tensors not read), None if it does not load."""
    try:
        import torch

        return int(torch.load(path, map_location="cpu", mmap=True, weights_only=False)["global_step"])
    except Exception:
        return None


def pretrain(
    root: Path, overrides: Sequence[str] = (), say=print, lock: Optional[FolderLock] = None, repo: Path = Path(".")
) -> Path:
    """``ROOT/pretrained_max.ckpt``: trained now (resuming an interrupted pre-training) unless it exists. Each
    attempt starts with a line ``== <time> starting|resuming from <last.ckpt>: <command>`` in ``pretrain.log``.
    Stopped (SIGTERM/SIGINT: :class:`polypool.repro.stopping.Stopped`), the pre-training saves its ``last.ckpt`` and
    ends before the exception goes on, saying what is kept."""
    target = pretrained_path(root)
    if target.is_file():
        say(f"quick: the shared max-pooling network exists ({target})")
        return target
    folder = Path(root) / "pretrain"
    last = folder / "checkpoints" / "last.ckpt"
    resume = last.is_file()
    command = pretrain_command(root, resume, overrides, repo)
    steps = pretrain_steps(overrides)
    say(
        f"quick: training the shared max-pooling network every pooling fine-tunes from "
        f"({steps} steps; log {folder / 'pretrain.log'})" + (f", resuming from {last}" if resume else "")
    )
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pretrain.log", "a") as log:
        log.write(
            f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} "
            f"{'resuming from ' + str(last) if resume else 'starting'}: {shlex.join(command)}\n"
        )
        log.flush()

        def left() -> str:
            step = checkpoint_step(last) if last.is_file() else None
            kept = (
                f"its last checkpoint {last} (step {step} of {steps}) is kept; run the same command again to resume it"
                if step is not None
                else "it had saved no checkpoint yet; run the same command again to start it over"
            )
            return f"during the quick pre-training: {kept} (log: {folder / 'pretrain.log'})"

        try:
            code = run_child(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=lock.fds if lock else (),
                on_start=_note_child(lock, "the quick pre-training, polypool fit"),
                left=left,
            )
        finally:
            if lock is not None:
                lock.note(child=None, child_command=None)
    if code:
        raise QuickError(f"the quick pre-training failed: {shlex.join(command)}; see {folder / 'pretrain.log'}")
    if not last.is_file():
        raise QuickError(f"the quick pre-training wrote no {last}")
    shutil.copyfile(last, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)  # complete or absent, never half-written
    return target


def prepare(root: Path, overrides: Sequence[str] = (), say=print, repo: Path = Path(".")) -> Path:
    """The generated set and the shared network under ``root`` (the pre-training's configs read in ``repo``);
    returns the network's path. Made under
    ``ROOT/quick.lock``: another process that prepares the same folder is waited for (saying which), then what it
    made is used and what it left is resumed."""
    root = Path(root)
    if (root / "VOCdevkit").is_dir() and pretrained_path(root).is_file():
        say(f"quick: the shared max-pooling network exists ({pretrained_path(root)})")
        return pretrained_path(root)
    lock = FolderLock(root / LOCK, f"the quick data folder {root}")
    try:
        lock.acquire(wait=True, say=say, waiting="quick: waiting for")
    except Stopped as stop:
        stop.left = (
            f"while waiting for another process to prepare the quick data folder {root} (lock file "
            f"{lock.path}): nothing was started here; run the same command again"
        )
        raise
    try:
        note = lock.takeover_note()
        if note:
            say(f"quick: {note}")
        make_data(root, lock)
        return pretrain(root, overrides, say, lock, repo)
    finally:
        lock.release()


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the data folder (reproduce.sh --quick: data/quick/voc)")
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path("."),
        help="the repository whose configs/ the pre-training uses (default: the current directory)",
    )
    args = parser.parse_args(argv)
    try:
        with stop_on_signals():
            print(prepare(args.root, overrides, repo=args.repo))
    except QuickError as error:
        sys.exit(f"polypool.quick: {error}")
    except Stopped as stop:
        print(f"polypool.quick: stopped ({stop.signal}) {stop.left}".rstrip(), file=sys.stderr)
        sys.exit(stop.code)


if __name__ == "__main__":
    main()
