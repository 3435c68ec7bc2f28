"""The fused CPU kernel's C++ source as files: every file is built, hashed into the build's name and shipped.

No compiler needed: these read the files, pyproject.toml and cpu_fused's build digest."""

import fnmatch
import re
import shutil
from pathlib import Path

import pytest

from polypool.pooling import cpu_fused

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "polypool"
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


def test_every_source_file_is_compiled_or_included():
    """Each file of csrc/ is a translation unit of the build or reached by a quoted #include from one (nothing
    stale left beside them), and every quoted #include names a file of csrc/."""
    files = {path.resolve() for path in cpu_fused.source_files()}
    sources = [path.resolve() for path in cpu_fused.SOURCES]
    assert set(sources) <= files
    reached, todo = set(), list(sources)
    while todo:
        path = todo.pop()
        if path in reached:
            continue
        reached.add(path)
        for name in INCLUDE.findall(path.read_text()):
            included = (path.parent / name).resolve()
            assert included in files, f"{path.name} includes {name}, which is not in csrc/"
            todo.append(included)
    assert reached == files, f"not compiled nor included: {sorted(str(p) for p in files - reached)}"


def test_build_digest_covers_every_file(tmp_path, monkeypatch):
    """An edit of any one file, a header too, renames the build (else torch would load the stale cached one)."""
    copy = tmp_path / "csrc"
    shutil.copytree(cpu_fused.CSRC, copy)
    monkeypatch.setattr(cpu_fused, "CSRC", copy)
    flags = cpu_fused._build_flags()
    base = cpu_fused.build_digest(flags)
    assert cpu_fused.build_digest(flags) == base
    assert cpu_fused.build_digest([*flags, "-DPPOOL_DOUBLE"]) != base
    files = cpu_fused.source_files()
    assert len(files) >= 3
    for path in files:
        text = path.read_bytes()
        path.write_bytes(text + b"\n")
        assert cpu_fused.build_digest(flags) != base, f"{path.name} is not part of the build digest"
        path.write_bytes(text)
    assert cpu_fused.build_digest(flags) == base


def test_package_data_ships_every_file():
    """pyproject.toml's package data takes every file of csrc/ into the wheel (and the sdist)."""
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["polypool"]
    for path in cpu_fused.source_files():
        name = path.relative_to(PACKAGE).as_posix()
        assert any(
            fnmatch.fnmatchcase(name, pattern) and name.count("/") == pattern.count("/") for pattern in patterns
        ), f"{name} matches no package-data pattern"
