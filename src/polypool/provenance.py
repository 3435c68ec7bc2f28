"""What produced a run: the software (this package's version and git commit, Python and the libraries) and the
hardware (the accelerator, the processes, the precision), as a dict a run record and a W&B run's config hold.

    python -m polypool --version     # the version and the environment in one line (:func:`one_line`)

:func:`software` and :func:`hardware` are cheap; :func:`mixed` says which keys differ across records, so a table
built from runs of two environments says so.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

# the libraries whose versions a record holds (the distribution names)
LIBRARIES = ("torch", "torchvision", "timm", "lightning", "torchmetrics", "numpy")
# the keys that make two runs' numbers incomparable when they differ (:func:`mixed`)
COMPARED = ("torch", "cuda", "accelerator", "device_name", "precision", "polypool")


def package_version() -> str:
    try:
        return metadata.version("polypool")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> Optional[str]:
    """``git args`` in the package's own checkout (None outside one, or without git)."""
    here = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": True when tracked files have uncommitted changes, None outside a
    checkout}``."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def software() -> dict[str, Any]:
    """This package's version and commit, Python's, and the versions of :data:`LIBRARIES`, CUDA and cuDNN as torch
    was built with them (None on a CPU build)."""
    import torch

    versions: dict[str, Any] = {
        "polypool": package_version(),
        **{f"git_{k}": v for k, v in git_state().items()},
        "python": platform.python_version(),
    }
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["torch"] = torch.__version__  # with the build's tag (2.14.1+cu130, +cpu): which wheel it is
    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return versions


def hardware(trainer=None) -> dict[str, Any]:
    """The accelerator a run used: GPU name and count (per node), or the CPU and its thread count; with a Lightning
    ``trainer``, also its world size, number of nodes and precision."""
    import torch

    info: dict[str, Any]
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    if (device is not None and device.type == "cuda") or (device is None and torch.cuda.is_available()):
        index = device.index if device is not None and device.index is not None else 0
        info = {
            "accelerator": "gpu",
            "device_name": torch.cuda.get_device_name(index),
            "devices_per_node": int(getattr(trainer, "num_devices", torch.cuda.device_count()) or 1),
        }
    else:
        info = {
            "accelerator": "cpu",
            "device_name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "devices_per_node": int(getattr(trainer, "num_devices", 1) or 1),
        }
    info["host"] = platform.node()
    if trainer is not None:  # a Trainer; a stand-in without these attributes gives what it has
        info.update(
            world_size=int(getattr(trainer, "world_size", 1)),
            num_nodes=int(getattr(trainer, "num_nodes", 1)),
            precision=str(getattr(trainer, "precision", None)),
        )
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def device_hours(seconds: float, hardware_info: dict[str, Any]) -> dict[str, Any]:
    """GPU-hours (every GPU of every node) or CPU-hours (the threads of every process) of ``seconds`` of wall time."""
    processes = int(hardware_info.get("world_size") or 1)
    if hardware_info.get("accelerator") == "gpu":
        return {"gpu_hours": round(seconds * processes / 3600, 4)}
    return {"cpu_hours": round(seconds * processes * int(hardware_info.get("threads") or 1) / 3600, 4)}


def one_line() -> str:
    """``polypool 0.1.0 (git abc1234) | Python 3.11.7 | torch 2.14.1 (built with CUDA 13.0, cuDNN 92400) | ... |
    CPU x86_64, 2 threads``: the version, the environment and the accelerator this process sees."""
    s, h = software(), hardware()
    commit = s.get("git_commit")
    where = f" (git {commit[:7]}{', uncommitted changes' if s.get('git_dirty') else ''})" if commit else ""
    torch_part = f"torch {s['torch']}" + (
        f" (built with CUDA {s['cuda']}, cuDNN {s['cudnn']})" if s.get("cuda") else " (CPU build)"
    )
    libraries = " | ".join(f"{name} {s[name]}" for name in LIBRARIES if name != "torch" and s.get(name))
    device = (
        f"{h['device_name']} x{h['devices_per_node']}"
        if h["accelerator"] == "gpu"
        else f"CPU {h['device_name']}, {h['threads']} threads"
    )
    return f"polypool {s['polypool']}{where} | Python {s['python']} | {torch_part} | {libraries} | {device}"


def mixed(provenances: Iterable[Optional[dict[str, Any]]]) -> dict[str, list[Any]]:
    """``{key: [values]}`` for each :data:`COMPARED` key on which the given provenances (software and hardware
    merged, as in a record) differ; records without provenance are left out."""
    seen: dict[str, list[Any]] = {}
    for provenance in provenances:
        if not provenance:
            continue
        flat = {**(provenance.get("software") or {}), **(provenance.get("hardware") or {})}
        for key in COMPARED:
            value = flat.get(key)
            if value not in seen.setdefault(key, []):
                seen[key].append(value)
    return {key: values for key, values in seen.items() if len(values) > 1}


def describe(record_provenance: dict[str, Any]) -> str:
    """One environment in words: ``polypool 0.1.0 (git abc1234), torch 2.14.1 (CUDA 13.0), NVIDIA H100 x4 (4
    processes, 1 node), precision bf16-mixed``."""
    s, h = record_provenance.get("software") or {}, record_provenance.get("hardware") or {}
    commit = s.get("git_commit")
    code = f"polypool {s.get('polypool')}" + (
        f" (git {commit[:7]}{', uncommitted changes' if s.get('git_dirty') else ''})" if commit else ""
    )
    torch_part = f"torch {s.get('torch')}" + (f" (CUDA {s['cuda']})" if s.get("cuda") else "")
    if h.get("accelerator") == "gpu":
        device = f"{h.get('device_name')} x{h.get('devices_per_node')}"
    else:
        device = f"CPU {h.get('device_name')} ({h.get('threads')} threads)"
    processes = f"{h.get('world_size', 1)} process(es), {h.get('num_nodes', 1)} node(s)"
    return f"{code}, {torch_part}, {device} ({processes}), precision {h.get('precision')}"
