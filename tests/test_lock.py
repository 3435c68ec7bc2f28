"""The locked environment (issue 31, section 2): requirements/lock.txt pins every package make setup installs, with
hashes; make setup installs from it (torch's build from another index with TORCH_CUDA); environment.yml installs the
same file."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "lock.txt"
spec = importlib.util.spec_from_file_location("lock_script", REPO / "scripts" / "lock.py")
lock_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock_script)


def pins(text: str) -> dict[str, str]:
    return {
        m.group(1).lower().replace("_", "-"): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==([^ \\\n]+)", text, re.MULTILINE)
    }


def test_every_package_of_the_lock_has_a_version_and_hashes():
    blocks = [b for b in lock_script.blocks(LOCK.read_text()) if b[:1].isalnum()]
    assert len(blocks) == len(pins(LOCK.read_text())) > 100
    for block in blocks:
        assert "==" in block.splitlines()[0] and "--hash=sha256:" in block, block.splitlines()[0]


def test_the_lock_holds_every_dependency_of_the_package_and_its_tests_and_torch_as_the_makefile_pins_it():
    locked = pins(LOCK.read_text())
    makefile = (REPO / "Makefile").read_text()
    assert locked["torch"] == re.search(r"^TORCH_VERSION \?= (\S+)", makefile, re.MULTILINE).group(1)
    assert locked["torchvision"] == re.search(r"^TORCHVISION_VERSION \?= (\S+)", makefile, re.MULTILINE).group(1)
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for text in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement = Requirement(text)
        name = requirement.name.lower().replace("_", "-")
        assert name in locked, f"{name} is not in the lock: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (name, locked[name])


def test_this_environment_is_the_locked_one():
    """What make setup installed here (CI's environment) is the lock's set, version for version."""
    locked = pins(LOCK.read_text())
    # in a fresh interpreter: once torch's cpp_extension has imported setuptools, the copies of packaging and
    # platformdirs that setuptools bundles are on this process's path and shadow the installed ones
    listing = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json; from importlib import metadata; print(json.dumps("
            "{d.metadata['Name']: d.version for d in metadata.distributions()}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installed = {name.lower().replace("_", "-"): version for name, version in json.loads(listing).items()}
    # torch's version carries its build's tag (2.14.1+cu130)
    wrong = {
        name: (version, installed.get(name))
        for name, version in locked.items()
        if (installed.get(name) or "").split("+")[0] != version
    }
    assert wrong == {}


def test_without_torch_drops_torchs_build_and_keeps_the_rest():
    text = LOCK.read_text()
    rest = pins(lock_script.without_torch(text))
    dropped = set(pins(text)) - set(rest)
    assert {"torch", "torchvision", "triton"} <= dropped
    assert all(re.match(r"^(torch|torchvision|triton|nvidia-)", name) for name in dropped), dropped
    assert "torchmetrics" in rest and "timm" in rest and "lightning" in rest


def test_make_setup_installs_from_the_lock_with_hashes_and_torch_builds_from_their_index():
    dry = subprocess.run(["make", "-n", "-B", "setup", "TORCH_CUDA=default"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "pip install --quiet --require-hashes --no-deps -r requirements/lock.txt" in dry.stdout
    assert "--no-deps --no-build-isolation -e ." in dry.stdout and '-e ".[test]"' not in dry.stdout
    cuda = subprocess.run(["make", "-n", "-B", "setup", "TORCH_CUDA=cu126"], cwd=REPO, capture_output=True, text=True)
    assert "--index-url https://download.pytorch.org/whl/cu126 torch==2.14.1 torchvision==0.29.1" in cuda.stdout
    assert "scripts/lock.py without-torch > .venv/lock-without-torch.txt" in cuda.stdout
    assert "--require-hashes --no-deps -r .venv/lock-without-torch.txt" in cuda.stdout
    loose = subprocess.run(["make", "-n", "-B", "setup", "LOCK="], cwd=REPO, capture_output=True, text=True)
    assert '-e ".[test]"' in loose.stdout and "require-hashes" not in loose.stdout


def test_environment_yml_installs_the_lock():
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d for d in environment["dependencies"] if isinstance(d, dict))["pip"]
    assert "-r requirements/lock.txt" in pip and "--no-deps" in pip
    python = next(d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == f"python={lock_script.PYTHON}"
