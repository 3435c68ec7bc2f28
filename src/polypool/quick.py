"""The CPU miniature of ``reproduce.sh --quick``: its generated set and the network every pooling starts from.

The paper fine-tunes every pooling from one network, ImageNet's VGG16, trained with max pooling, its pools swapped
before fine-tuning. Without network there are no ImageNet weights here, so the miniature does the same on a small
scale: one VGG16 (with BatchNorm) is trained with max pooling on the generated set first, and every pooling of the
table then fine-tunes from it (``--model.network_weights``, configs/trainer/quick.yaml). That first network is made
once per data folder and shared by every pooling and seed, as ImageNet's weights are.

    python -m polypool.quick DIR            # DIR/VOCdevkit (the set) and DIR/pretrained_max.ckpt
    python -m polypool.quick DIR -- --trainer.max_steps 4   # overrides for the pre-training run
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

PRETRAINED = "pretrained_max.ckpt"
# The committed miniature (3 seeds), kept apart from a user's own results/quick/runs so that a run never takes it for
# its own: a --quick table shows it as a section of its own. Made by
# ./reproduce.sh voc vgg --quick --seeds 3 --out results/quick/reference -- --data.init_args.root data/quick/voc
REFERENCE = Path("results/quick/reference")
PRETRAIN_STEPS = 300  # the shared max-pooling network's steps (each pooling's fine-tune: quick.yaml's max_steps)
PRETRAIN_LR = 5e-4  # from random weights; the fine-tunes take quick.yaml's lower lr
CONFIG = "configs/voc/vgg.yaml"
PRESET = "configs/trainer/quick.yaml"


class QuickError(RuntimeError):
    """A step of the miniature's preparation failed; the message names the command and its log."""


def pretrained_path(root: Path) -> Path:
    return Path(root) / PRETRAINED


def make_data(root: Path) -> None:
    """The generated detail-heavy set (``python -m polypool.data.fixtures voc ROOT --preset quick``), once."""
    if (Path(root) / "VOCdevkit").is_dir():
        return
    command = [sys.executable, "-m", "polypool.data.fixtures", "voc", str(root), "--preset", "quick"]
    if subprocess.run(command).returncode:
        raise QuickError(f"generating the quick set failed: {shlex.join(command)}")


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


def pretrain_command(root: Path, resume: bool, overrides: Sequence[str] = ()) -> list[str]:
    """The max-pooling run every pooling fine-tunes from: the quick preset from random weights, longer;
    ``overrides`` (:func:`pretrain_overrides`) come last, so a test can make it tiny."""
    folder = Path(root) / "pretrain"
    return [sys.executable, "-m", "polypool", "fit", "--config", CONFIG, "--config", PRESET,
            "--data.init_args.root", str(root), "--model.pooling", "max", "--model.network_weights", "null",
            "--trainer.max_steps", str(PRETRAIN_STEPS), "--model.lr", str(PRETRAIN_LR),
            "--trainer.default_root_dir", str(folder),
            "--records_root", str(folder / "runs"), "--experiment", "pretrain", "--wandb_project", "null",
            "--seed_everything", "0", *(["--ckpt_path", "last"] if resume else []), *pretrain_overrides(overrides)]


def pretrain(root: Path, overrides: Sequence[str] = (), say=print) -> Path:
    """``ROOT/pretrained_max.ckpt``: trained now (resuming an interrupted pre-training) unless it exists."""
    target = pretrained_path(root)
    if target.is_file():
        say(f"quick: the shared max-pooling network exists ({target})")
        return target
    folder = Path(root) / "pretrain"
    last = folder / "checkpoints" / "last.ckpt"
    command = pretrain_command(root, last.is_file(), overrides)
    say(f"quick: training the shared max-pooling network every pooling fine-tunes from "
        f"({pretrain_steps(overrides)} steps; log {folder / 'pretrain.log'})")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pretrain.log", "a") as log:
        if subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise QuickError(f"the quick pre-training failed: {shlex.join(command)}; see {folder / 'pretrain.log'}")
    if not last.is_file():
        raise QuickError(f"the quick pre-training wrote no {last}")
    shutil.copyfile(last, target.with_suffix(".tmp"))
    target.with_suffix(".tmp").replace(target)  # complete or absent, never half-written
    return target


def prepare(root: Path, overrides: Sequence[str] = (), say=print) -> Path:
    """The generated set and the shared network under ``root``; returns the network's path."""
    make_data(root)
    return pretrain(root, overrides, say)


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, help="the data folder (reproduce.sh --quick: data/quick/voc)")
    args = parser.parse_args(argv)
    try:
        print(prepare(args.root, overrides))
    except QuickError as error:
        sys.exit(f"polypool.quick: {error}")


if __name__ == "__main__":
    main()
