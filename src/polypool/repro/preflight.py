"""Checks of the node before any run starts: the GPUs torch sees (and the fix when it does not: the driver's CUDA,
torch's build), the pretrained weights of the config in their caches (fetched, or with ``--offline`` an error naming
where they were looked for), and the data (the generated quick set, a download, or the layout of a given root).
``--prefetch`` is these checks alone, on a node with internet.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import Sweep, SweepError, get
from .stopping import run_child

# The CUDA builds of torch on https://download.pytorch.org/whl/<flavour>; the fix names the newest one the
# driver supports.
TORCH_CUDA_FLAVOURS = ("cu118", "cu121", "cu124", "cu126", "cu128", "cu129", "cu130")


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
    return {
        "driver": driver.group(1) if driver else None,
        "cuda": cuda.group(1) if cuda else None,
        "gpus": len([line for line in listing.stdout.splitlines() if line.startswith("GPU ")]),
        "error": (out.stderr or out.stdout).strip()[:300] if out.returncode else None,
    }


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
    lines = [
        f"--gpus {wanted}, but torch sees {seen} GPU(s).",
        f"  torch {torch.__version__}: built for CUDA {built} (torch.version.cuda)"
        if built
        else f"  torch {torch.__version__}: a CPU-only build (torch.version.cuda is None)",
    ]
    if smi is None:
        lines.append(
            "  driver: no nvidia-smi on PATH, so no NVIDIA driver on this node (a login node? run on a GPU "
            "node, or submit the runs with --slurm)"
        )
        fix = "run on a node with NVIDIA GPUs (or: make setup TORCH_CUDA=cu126 there, for a driver of CUDA 12.6+)"
    elif smi.get("error") and not smi.get("driver"):
        lines.append(f"  driver: nvidia-smi failed: {smi['error']}")
        fix = "fix the NVIDIA driver (nvidia-smi must list the GPUs), then run again"
    else:
        lines.append(
            f"  driver: {smi['driver']}, supports CUDA up to {smi['cuda']} (nvidia-smi); "
            f"{smi['gpus']} GPU(s) listed by nvidia-smi -L"
        )
        flavour = flavour_for(smi["cuda"])
        if built is None or _version_tuple(built) > _version_tuple(smi["cuda"]):
            fix = (
                f"make setup TORCH_CUDA={flavour}   (torch built for CUDA {smi['cuda']} or older; README.md, "
                f"'Reproducing the tables'), or update the driver"
            )
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

    from ..models.networks import AUTHORS_BACKBONES

    if str(backbone) in AUTHORS_BACKBONES:  # the authors' ResNet-50: CSAIL's file, through torch hub's cache
        from ..models.authors_resnet import AUTHORS_RESNET50_URL

        return [WeightNeed(str(backbone), "url", AUTHORS_RESNET50_URL)]
    if not timm.is_model(str(backbone)):
        raise SweepError(f"model.backbone {backbone!r} is not a timm model")
    cfg = get_pretrained_cfg(str(backbone))
    if cfg is None:
        raise SweepError(
            f"timm has no pretrained weights for {backbone!r}; set model.pretrained false or pass "
            f"-- --model.weights FILE"
        )
    source, location = pretrained_source(cfg)
    if source == "hf-hub":
        if isinstance(location, tuple):
            return [WeightNeed(str(backbone), source, location[0], (location[1],))]
        return [WeightNeed(str(backbone), source, location, ("model.safetensors", "pytorch_model.bin"))]
    if source == "url" and location:
        return [WeightNeed(str(backbone), "url", location)]
    raise SweepError(f"cannot tell where timm loads {backbone!r}'s weights from (source {source!r})")


def pretrained_source(cfg) -> tuple[str, Any]:
    """Where timm loads a pretrained config's weights from, read from its public fields in timm's order of
    preference (``timm.models._builder``, private): the Hugging Face hub when the config names a hub id (with the
    file name when it overrides one), else its URL."""
    if cfg.hf_hub_id:
        filename = getattr(cfg, "hf_hub_filename", None)
        return "hf-hub", ((cfg.hf_hub_id, filename) if filename else cfg.hf_hub_id)
    return "url", cfg.url


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
            raise SweepError(
                f"cannot download the pretrained weights of {need.backbone}: {url} is unreachable "
                f"({problem}). They go to {cache}. Run --prefetch on a node with internet (e.g. the "
                f"login node; same HF_HOME / TORCH_HOME), or pass a local file: -- --model.weights FILE"
            )
    import timm

    try:
        timm.create_model(need.backbone, pretrained=True)
    except Exception as error:
        raise SweepError(
            f"cannot download the pretrained weights of {need.backbone} from {need.urls()} into "
            f"{cache} ({type(error).__name__}: {error})"
        ) from error
    found = need.cached()
    if found is None:
        raise SweepError(
            f"timm loaded {need.backbone}'s weights but they are not in {cache}: check HF_HOME / TORCH_HOME"
        )
    return found


def ensure_weights(values: dict[str, Any], offline: bool, say=print) -> None:
    """Every pretrained weight of the config in its cache: already there, fetched now, or (``offline``) an error
    naming where it looked."""
    for need in weight_needs(values):
        if need.source == "file":
            if not Path(need.location).is_file():
                raise SweepError(
                    f"model.weights: no file {need.location}: pass the path of a timm checkpoint or "
                    f"state dict for {need.backbone}"
                )
            say(f"weights: {need.backbone} from the local file {need.location}: nothing to fetch")
            continue
        found = need.cached()
        if found is not None:
            say(f"weights: {need.backbone} already in {found}: nothing to fetch")
            continue
        if offline:
            raise SweepError(
                f"the pretrained weights of {need.backbone} are missing: looked in "
                f"{', '.join(str(p) for p in need.looked_in())} ({', '.join(need.urls())}). Run "
                f"./reproduce.sh <dataset> <config> --prefetch on a node with internet (same HF_HOME / "
                f"TORCH_HOME), or pass -- --model.weights FILE"
            )
        say(f"weights: downloading {need.backbone} ({need.urls()[0]}) into {need.cache_dir()}")
        say(f"weights: {need.backbone} in {fetch_weight(need)}")
    if not weight_needs(values):
        say("weights: the config loads no pretrained weights (pretrained: false): nothing to fetch")


def quick_data(root: Path, overrides: Sequence[str] = (), say=print, repo: Path = Path(".")) -> None:
    """The generated set of ``--quick`` and the max-pooling network every pooling fine-tunes from (the one place
    they are made: :func:`polypool.quick.prepare`; the overrides after -- apply to its pre-training too)."""
    from .quick import QuickError, prepare

    try:
        prepare(root, overrides, say, repo)
    except QuickError as error:
        raise SweepError(str(error)) from error


def dataset_ready(dataset: str, root: Path, train_split: str) -> Optional[str]:
    """None if ``root`` holds the dataset in its layout, else the layout check's message."""
    from ..data import ADE20KDataModule, CityscapesDataModule, VOCSegmentationDataModule
    from ..data.dataset import DatasetError

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
        quick_data(sweep.quick_data_root(), sweep.extra, say, sweep.repo)
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
        command = [
            sys.executable,
            "-m",
            "polypool.data.download",
            sweep.dataset,
            str(root),
            "--train-split",
            train_split,
        ]
        code = run_child(
            command,
            left=f"while downloading the {sweep.dataset} data into {root}: run the same command again to download it",
        )
        if code:
            raise SweepError(f"the download failed ({shlex.join(command)})")
    if not root.is_dir():
        raise SweepError(
            f"no data at {root}. See README.md, 'Data' (or pass -- --data.init_args.root DIR, or -- "
            f"--data.init_args.download true"
            + (", or run --prefetch on a node with internet)" if sweep.offline else ").")
        )
    # The layout, not only the folder: an incomplete set would otherwise fail in every run, after the sweep started.
    problem = dataset_ready(sweep.dataset, root, train_split)
    if problem is not None:
        download_command = shlex.join(
            [".venv/bin/python", "-m", "polypool.data.download", sweep.dataset, str(root), "--train-split", train_split]
        )
        where = (
            f"./reproduce.sh {sweep.dataset} {sweep.config_name} --prefetch on a node with internet"
            if sweep.offline
            else f"{download_command} (or ./reproduce.sh {sweep.dataset} {sweep.config_name} --prefetch)"
        )
        raise SweepError(
            f"the {sweep.dataset} data in {root} is incomplete, so every run would fail: {problem}\n"
            f"  fix: restore the missing part, or move {root} away and download the set: {where}; or "
            f"pass -- --data.init_args.root DIR"
        )
