"""Checkpoints complete or absent, and a damaged one named before a resume (issue 32, section 3).

* :class:`AtomicCheckpointIO`: Lightning's ``TorchCheckpointIO`` writing each checkpoint to a temporary file in its
  folder, then renaming it; a full disk raises :class:`~polypool.callbacks.NoSpaceError`.
* :func:`checked_resume_path`: ``--ckpt_path`` checked before the fit (:class:`DamagedCheckpoint` when there is
  nothing to fall back to).

The CLI installs and calls these (:mod:`polypool.cli`, which re-exports them under their old import path)."""

from __future__ import annotations

import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from typing_extensions import override

from .callbacks.files import NO_SPACE_ERRNOS, NoSpaceError, format_bytes, free_bytes, temporary_name


def _is_local(path: Any) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


def has_own_checkpoint_io(strategy: Any, plugins: list) -> bool:
    """Whether the trainer gets a ``CheckpointIO`` of its own (a plugin, or a strategy that sets or needs its own:
    XLA, DeepSpeed, FSDP), so that :class:`AtomicCheckpointIO` is not installed."""
    # Strategy's private _checkpoint_io: its public checkpoint_io property cannot tell a CheckpointIO given to the
    # strategy from the default TorchCheckpointIO it creates on first reading
    if any(isinstance(p, CheckpointIO) for p in plugins) or getattr(strategy, "_checkpoint_io", None) is not None:
        return True
    name = (strategy if isinstance(strategy, str) else type(strategy).__name__).lower()
    return any(kind in name for kind in ("xla", "deepspeed", "fsdp"))


def checkpoint_nbytes(checkpoint: Any) -> int:
    """The bytes of the tensors in ``checkpoint`` (each storage once): about the size ``torch.save`` writes."""
    seen, total, stack = set(), 0, [checkpoint]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            try:
                storage = item.untyped_storage()
                key = (str(item.device), storage.data_ptr(), storage.nbytes())
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
            except (RuntimeError, NotImplementedError):
                total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose files reach their name only when complete: ``torch.save`` to a
    hidden temporary file in the checkpoint's own folder, flushed to disk, then ``os.replace`` (atomic). Lightning's
    own save writes to the system's temporary folder and moves the file, which across file systems is a copy into
    the final name: a full disk left a truncated ``last.ckpt`` there.

    A full disk (``ENOSPC``/``EDQUOT``) raises :class:`~polypool.callbacks.NoSpaceError` naming the folder and the
    space needed (the size of the checkpoint being written, or the previous one's if larger: the new file is written
    beside it); the temporary file is removed and the previous checkpoint stays as it was. Remote paths
    (``s3://`` ...) and ``storage_options`` go to ``TorchCheckpointIO``."""

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_name(path)
            with open(tmp, "xb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
        except BaseException as error:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
                raise NoSpaceError(self.no_space_message(checkpoint, path)) from error
            raise

    @staticmethod
    def no_space_message(checkpoint: dict[str, Any], path: Path) -> str:
        needed = checkpoint_nbytes(checkpoint)
        previous = path.stat().st_size if path.is_file() else 0
        kept = (
            f"the previous {path.name} ({format_bytes(previous)}) is unchanged"
            if previous
            else f"no {path.name} was written"
        )
        return (
            f"no space left on device to save the checkpoint {path.name} in {path.parent}: it needs about "
            f"{format_bytes(max(needed, previous))} free there ({format_bytes(free_bytes(path.parent))} free "
            f"now); {kept}, nothing half-written was left. Free some space in {path.parent} (or give the run "
            f"another --trainer.default_root_dir), then resume with --ckpt_path last"
        )


class DamagedCheckpoint(RuntimeError):
    """``--ckpt_path`` names a checkpoint that cannot be loaded and there is nothing to fall back to; the message
    names the file and the fix. The CLI prints it and exits with status 1."""


def checkpoint_problem(path: Any) -> tuple[Optional[str], Optional[int]]:
    """``(why the checkpoint cannot be resumed from, None)``, or ``(None, its global step)`` when it loads."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        return f"cannot be read: {error.strerror}", None
    if size == 0:
        return "an empty file", None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "" if zipfile.is_zipfile(path) else "; no zip directory at its end: written only in part?"
        return f"{format_bytes(size)}, torch.load fails: {first}{hint}", None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "not a Lightning checkpoint (no 'state_dict')", None
    return None, checkpoint.get("global_step")


def last_checkpoints(trainer) -> list[Path]:
    """The ``last*.ckpt`` files among which Lightning's ``ckpt_path="last"`` takes the newest."""
    found: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            found |= {str(p) for p in Path(callback.dirpath).glob("last*.ckpt")}
    return [Path(p) for p in found if _is_local(p) and Path(p).is_file()]


def checked_resume_path(ckpt_path: Optional[str], trainer, say=None) -> Optional[str]:
    """``ckpt_path`` if the checkpoint it names loads. For ``"last"`` with a damaged newest ``last*.ckpt``: the
    newest readable other checkpoint of its folder (the best one), said on stderr; with none, and for a damaged
    explicit path, raises :class:`DamagedCheckpoint` naming the file and the fix. ``best``, ``hpc``, remote paths
    and paths that do not exist are left to Lightning."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    if (
        not ckpt_path
        or ckpt_path in ("best", "hpc")
        or str(ckpt_path).startswith("registry")
        or not _is_local(ckpt_path)
    ):
        return ckpt_path
    if ckpt_path == "last":
        candidates = last_checkpoints(trainer)
        if not candidates:
            return ckpt_path
        path = max(candidates, key=lambda p: p.stat().st_mtime)  # the one Lightning would load
    else:
        path = Path(str(ckpt_path).removeprefix("file://"))
        if not path.is_file():
            return ckpt_path
    problem, _ = checkpoint_problem(path)
    if problem is None:
        return ckpt_path
    if ckpt_path != "last":
        raise DamagedCheckpoint(
            f"cannot resume: the checkpoint {path} is damaged ({problem}). Pass --ckpt_path "
            f"with another checkpoint, or leave --ckpt_path out to train from the start"
        )
    others = sorted(
        (p for p in path.parent.glob("*.ckpt") if p != path and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for other in others:
        other_problem, step = checkpoint_problem(other)
        if other_problem is None:
            if trainer.is_global_zero:
                say(
                    f"polypool: the checkpoint {path} is damaged ({problem}); resuming from {other} (step {step}), "
                    f"the newest readable checkpoint in {path.parent}: the steps after it are trained again, and "
                    f"the next checkpoint replaces {path.name}"
                )
            return str(other)
        if trainer.is_global_zero:
            say(f"polypool: {other} is damaged too ({other_problem})")
    raise DamagedCheckpoint(
        f"cannot resume: the checkpoint {path} is damaged ({problem}) and {path.parent} holds no "
        f"other readable checkpoint. Delete it (rm '{path}') and run the same command again to "
        f"train this run from the start, or pass --ckpt_path with another checkpoint"
    )
