#!/usr/bin/env python
"""Mutation testing with mutmut 3, one module at a time against the fast tests that cover it; prints kill rates.

    python scripts/mutate.py                      # every module below, a 10% sample of each (make mutate)
    python scripts/mutate.py tables transforms    # some of them
    python scripts/mutate.py --sample all pooling # every mutant of a module (hours for pooling and models)
    python scripts/mutate.py --list               # the modules and their tests

Each module runs in its own copy of the repository, ``build/mutate/<module>/`` (never in the working tree), whose
``setup.cfg`` names the files to mutate and the tests to run; mutmut forks one worker per mutant from a fork
server (torch is not fork-safe after it has run) and runs only the tests that reach the mutated function. The copy
keeps the results: ``cd build/mutate/tables && ../../../.venv/bin/mutmut show <mutant>`` shows one, and a rerun
re-tests only what changed. Not part of CI: about a minute per 100 mutants of a small module on 2 cores, far more
for ``pooling`` and ``models``.

Kill rate = killed / (killed + survived + no tests + suspicious); a timeout counts as killed (the mutant hung a
test), "skipped"/"not checked" mutants are left out. Survivors are listed; judging which are equivalent (no test
could tell them apart) is left to the reader, with ``mutmut show``.

Sampling. Every mutant of every module takes hours on 2 cores (each survivor runs every test that reaches its
function), so by default each module tests a systematic sample: the mutants whose number within their function
ends in the chosen digits (``--sample 10`` = numbers ending in 3, ``--sample 20`` = 3 or 7, ...; one mutmut glob,
so the sample is the same on every run and covers every function with enough mutants). The kill rate of a sample
is an estimate: the table prints its 95% (Wilson) interval. ``--sample all`` tests every mutant.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutate"

POOLING_TESTS = [
    "tests/test_p_pool2d.py",
    "tests/test_p_pool2d_cpu_fused.py",
    "tests/test_p_pool2d_dense.py",
    "tests/test_p_pool2d_subnormal.py",
    "tests/test_p_pool2d_count_include_pad.py",
    "tests/test_relu_hint.py",
    "tests/test_baselines.py",
    "tests/test_ppool_layer.py",
    "tests/test_pooling_contracts.py",
    # torch.export's traced paths and the Triton safety nets. Not tests/test_compile.py: Dynamo cannot
    # trace mutmut's trampolines (a ContextVar.set), so every torch.compile test fails on a clean copy.
    "tests/test_export.py",
    "tests/test_cuda_path.py",
]
# name -> (files to mutate, files not to mutate, the fast tests that cover them)
MODULES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "transforms": (["src/polypool/data/transforms.py"], [], ["tests/test_data.py"]),
    "tables": (["src/polypool/repro/tables.py"], [], ["tests/test_tables.py"]),
    "surgery": (["src/polypool/surgery.py"], [], ["tests/test_surgery.py"]),
    # Triton's kernels are compiled from their source by @triton.jit: a mutmut trampoline is not a kernel.
    # custom_ops.py runs only inside torch.compile (see POOLING_TESTS), and torch.library.custom_op infers its ops'
    # schemas from annotations that a trampoline does not keep: a mutated copy would not even import.
    "pooling": (
        ["src/polypool/pooling/*.py"],
        ["src/polypool/pooling/triton_*.py", "src/polypool/pooling/custom_ops.py"],
        POOLING_TESTS,
    ),
    "models": (
        ["src/polypool/models/*.py"],
        [],
        ["tests/test_segmentation_model.py", "tests/test_model_checks.py", "tests/test_networks.py"],
    ),
}
# What the tests read besides src/ and tests/ (the paper's tables for tables.py and its tests).
ALSO_COPY = ["results/paper", "configs"]
STATUSES = (
    "killed",
    "timeout",
    "survived",
    "no tests",
    "suspicious",
    "skipped",
    "segfault",
    "not checked",
    "caught by type check",
    "check was interrupted by user",
)


# --sample PERCENT -> the last digits of the sampled mutant numbers (spread out, so neighbouring mutants of one
# expression are not all in or all out)
SAMPLE_DIGITS = {"10": "3", "20": "37", "30": "147", "40": "1357", "50": "13579"}


def sample_pattern(percent: str) -> list[str]:
    """mutmut's mutant-name globs for a sample (``[]``: every mutant)."""
    if percent == "all":
        return []
    return [f"*__mutmut_*[{SAMPLE_DIGITS[percent]}]"]


def wilson(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent (an estimate from a sample of mutants)."""
    if n == 0:
        return float("nan"), float("nan")
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * (centre - half), 100.0 * (centre + half)


def cfg_list(values: list[str]) -> str:
    return "\n" + "\n".join(f"    {v}" for v in values) if values else ""


def prepare(name: str) -> Path:
    """A fresh copy of src/, tests/ and the data the tests read, with this module's [mutmut] configuration."""
    only, exclude, tests = MODULES[name]
    work = WORK / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for path in ["src", "tests", *ALSO_COPY]:
        shutil.copytree(ROOT / path, work / path, ignore=ignore)
    # pytest's configuration (markers, addopts) without a [tool.mutmut] table: setup.cfg below is the config
    pyproject = (ROOT / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(re.sub(r"\n\[tool\.mutmut\][^\[]*", "\n", pyproject))
    settings = [
        "[mutmut]",
        "source_paths=src/",
        f"only_mutate={cfg_list(only)}",
        *([f"do_not_mutate={cfg_list(exclude)}"] if exclude else []),
        f"pytest_add_cli_args={cfg_list(['-m', 'not slow', '-p', 'no:cacheprovider', '-q', '-x'])}",
        f"pytest_add_cli_args_test_selection={cfg_list(tests)}",
        f"also_copy={cfg_list(ALSO_COPY)}",
        "process_isolation=forkserver",
        "use_git_change_detection=false",
    ]
    (work / "setup.cfg").write_text("\n".join(settings) + "\n")
    return work


def results(work: Path, mutmut: str) -> dict[str, str]:
    out = subprocess.run([mutmut, "results", "--all", "true"], cwd=work, capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        match = re.match(r"\s+(\S+): (.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def summarise(name: str, found: dict[str, str], seconds: float) -> dict:
    counts = collections.Counter(found.values())
    killed = counts["killed"] + counts["timeout"]
    judged = killed + counts["survived"] + counts["no tests"] + counts["suspicious"]
    return {
        "module": name,
        "mutants": len(found),
        "killed": killed,
        "survived": counts["survived"],
        "no tests": counts["no tests"],
        "other": len(found) - judged,
        "rate": 100.0 * killed / judged if judged else float("nan"),
        "interval": wilson(killed, judged),
        "seconds": seconds,
        "survivors": sorted(k for k, v in found.items() if v in ("survived", "no tests", "suspicious")),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, and exit")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="parallel mutant workers")
    parser.add_argument("--reuse", action="store_true", help="keep build/mutate/<module> and its earlier results")
    parser.add_argument(
        "--sample",
        default="10",
        choices=[*SAMPLE_DIGITS, "all"],
        help="percent of each module's mutants to test, a fixed systematic sample (default 10); "
        "'all' tests every mutant",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, (only, exclude, tests) in MODULES.items():
            print(
                f"{name}: mutate {' '.join(only)}{' except ' + ' '.join(exclude) if exclude else ''}; "
                f"tests {' '.join(tests)}"
            )
        return 0
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        parser.error(f"unknown module(s) {sorted(unknown)}; choose from {', '.join(MODULES)}")
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None:
        parser.error("mutmut is not installed: pip install -e '.[test]'")
    rows, failed = [], []
    for name in args.modules or list(MODULES):
        work = WORK / name if args.reuse and (WORK / name).exists() else prepare(name)
        print(f"== {name}: mutmut run in {work.relative_to(ROOT)}", flush=True)
        start = time.time()
        run = subprocess.run(
            ["nice", "-n", "10", mutmut, "run", "--max-children", str(args.max_children), *sample_pattern(args.sample)],
            cwd=work,
        )
        row = summarise(name, results(work, mutmut), time.time() - start)
        if run.returncode != 0:
            failed.append(name)
            print(
                f"   mutmut run exited with {run.returncode}: nothing was tested if the clean run failed; add "
                f"debug=true to {work.relative_to(ROOT)}/setup.cfg and rerun there to see the failing test",
                flush=True,
            )
        rows.append(row)
        for survivor in row["survivors"]:
            print(f"   survived: {survivor}")
    sampled = "every mutant" if args.sample == "all" else f"a {args.sample}% sample of the mutants"
    print(f"\n{sampled}; 'other' = not tested (outside the sample, skipped); 95% interval of the kill rate (Wilson)")
    print(
        f"{'module':<12}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'other':>7}{'kill %':>8}"
        f"{'95% interval':>15}{'time':>8}"
    )
    for row in rows:
        low, high = row["interval"]
        print(
            f"{row['module']:<12}{row['mutants']:>8}{row['killed']:>8}{row['survived']:>9}{row['no tests']:>9}"
            f"{row['other']:>7}{row['rate']:>8.1f}{f'{low:.1f}-{high:.1f}':>15}{row['seconds'] / 60:>7.1f}m"
        )
    if failed:
        print(f"mutmut failed for: {' '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
