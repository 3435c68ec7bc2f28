"""What produced a run (issue 31, section 1): every record holds the software and the hardware, the table says which
environments its rows came from and says it plainly when they differ, and ``python -m polypool --version`` prints
the environment in one line."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from polypool import provenance
from polypool.cli import main
from polypool.data.fixtures import make_voc
from polypool.repro.tables import main as tables

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_version_prints_the_package_and_the_environment_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "polypool", "--version"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith(f"polypool {metadata.version('polypool')}")
    for part in (
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"lightning {metadata.version('lightning')}",
        f"timm {metadata.version('timm')}",
        f"torchmetrics {metadata.version('torchmetrics')}",
        f"{torch.get_num_threads()} threads",
    ):
        assert part in line, (part, line)


def test_a_record_holds_the_software_the_hardware_and_the_times(tmp_path):
    root = make_voc(tmp_path / "voc", n_train=4, n_val=2, size=(32, 32), seed=0)
    main(
        [
            "fit",
            "--config",
            "configs/voc/vgg.yaml",
            "--config",
            "configs/trainer/quick.yaml",
            "--data.init_args.root",
            str(root),
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.crop_size",
            "32",
            "--model.backbone",
            "resnet18",
            "--model.head",
            "aspp",
            "--model.output_stride",
            "32",
            "--model.pooling",
            "max",
            "--trainer.max_steps",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path / "logs"),
            "--records_root",
            str(tmp_path / "runs"),
            "--wandb_project",
            "null",
        ]
    )
    [path] = (tmp_path / "runs").rglob("*.json")
    record = json.loads(path.read_text())
    software, hardware = record["provenance"]["software"], record["provenance"]["hardware"]
    assert software["polypool"] == metadata.version("polypool")
    assert software["torch"] == torch.__version__ and software["timm"] == metadata.version("timm")
    assert software["lightning"] == metadata.version("lightning")
    assert software["torchmetrics"] == metadata.version("torchmetrics")
    assert software["python"] == platform.python_version()
    assert software["cuda"] == torch.version.cuda and "cudnn" in software
    assert software["git_commit"] == record["git_commit"] and isinstance(software["git_dirty"], bool)
    assert hardware["accelerator"] == "cpu" and hardware["threads"] == torch.get_num_threads()
    assert (hardware["world_size"], hardware["num_nodes"], hardware["precision"]) == (1, 1, "32-true")
    started, ended = record["provenance"]["started"], record["provenance"]["ended"]
    assert started <= ended and started.endswith("+00:00")
    expected = record["wall_time_s"] * hardware["threads"] / 3600
    assert record["provenance"]["cpu_hours"] == pytest.approx(expected, abs=1e-3)


def test_git_dirty_flags_uncommitted_changes(monkeypatch):
    answers = {("rev-parse", "HEAD"): "abc", ("status", "--porcelain", "--untracked-files=no"): " M src/x.py"}
    monkeypatch.setattr(provenance, "_git", lambda *args: answers[args])
    assert provenance.git_state() == {"commit": "abc", "dirty": True}
    answers[("status", "--porcelain", "--untracked-files=no")] = ""
    assert provenance.git_state() == {"commit": "abc", "dirty": False}
    monkeypatch.setattr(provenance, "_git", lambda *args: None)  # not a checkout
    assert provenance.git_state() == {"commit": None, "dirty": None}


def gpu_provenance(torch_version="2.14.1", gpu="NVIDIA H100 80GB HBM3", precision="bf16-mixed"):
    return {
        "software": {
            "polypool": "0.1.0",
            "git_commit": "abcdef0123",
            "git_dirty": False,
            "torch": torch_version,
            "cuda": "13.0",
        },
        "hardware": {
            "accelerator": "gpu",
            "device_name": gpu,
            "devices_per_node": 4,
            "world_size": 4,
            "num_nodes": 1,
            "precision": precision,
        },
    }


def write(root, method, seed, prov):
    path = root / "voc" / "vgg" / method / f"{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"per_class_iou": [0.5] * 21, "miou": 0.5, "seed": seed}
    if prov is not None:
        record["provenance"] = prov
    path.write_text(json.dumps(record))


def test_the_table_names_its_environment_and_says_plainly_when_rows_mix_them(tmp_path):
    same = tmp_path / "same"
    write(same, "max", 0, gpu_provenance())
    write(same, "ppool", 0, gpu_provenance())
    text = tables(["--runs", str(same), "--dataset", "voc", "--backbone", "vgg", "--out", str(tmp_path / "a")])
    assert (
        "Environment of every run: polypool 0.1.0 (git abcdef0), torch 2.14.1 (CUDA 13.0), NVIDIA H100 80GB HBM3 "
        "x4 (4 process(es), 1 node(s)), precision bf16-mixed."
    ) in text
    assert "MIX" not in text
    mixed = tmp_path / "mixed"
    write(mixed, "max", 0, gpu_provenance())
    write(mixed, "ppool", 0, gpu_provenance(torch_version="2.13.0", gpu="NVIDIA A100-SXM4-40GB", precision="32-true"))
    write(mixed, "avg", 0, None)
    text = tables(["--runs", str(mixed), "--dataset", "voc", "--backbone", "vgg", "--out", str(tmp_path / "b")])
    assert "The rows come from 2 environments: " in text and "(Max seed 0)" in text and "(P-pooling seed 0)" in text
    assert (
        "These rows MIX environments, so their differences include the environment's: torch 2.14.1 / 2.13.0; "
        "device_name NVIDIA H100 80GB HBM3 / NVIDIA A100-SXM4-40GB; precision bf16-mixed / 32-true."
    ) in text
    assert "No environment recorded for Average seed 0" in text
