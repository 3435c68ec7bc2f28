"""``scripts/gpu_check.py`` (``make gpu-check``) fails when a part fails (issue 16).

It used to exit 0 whatever pytest returned and whatever FAIL rows or probes it printed: only a part that raised
made it exit 1. The fast tests load the script in this process (``--smoke``: no GPU needed) and force one part's
failure through what that part reads (pytest's return code, a comparison's error, a probe's output), without
running the Triton kernels; the slow test runs ``--smoke`` end to end. The last test keeps the README's benchmark
section to what was measured.
"""

import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from polypool.pooling import triton_fused

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture
def gpu_check(monkeypatch, tmp_path):
    """The script as a module, parsed as ``--smoke --out <tmp>/report.md``, its side effects undone afterwards."""
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--smoke", "--out", str(tmp_path / "report.md")])
    monkeypatch.setattr(sys, "path", list(sys.path))  # it puts benchmarks/ first
    # it sets both variables in os.environ: setting them here first makes monkeypatch restore the session's values
    monkeypatch.setenv("POLYPOOL_TRITON", "strict")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_fused, "INT64_FROM", triton_fused.INT64_FROM)  # part_big lowers it in a smoke run
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.OUT = tmp_path / "report.md"
    return module


def report(module) -> str:
    return module.OUT.read_text()


def test_a_failed_part_makes_the_check_exit_non_zero(gpu_check, monkeypatch):
    """main() (the exit status) is 1 when a part reports a failure or raises, and the report's last line names those
    parts; the parts that passed are not named."""

    def passes():
        gpu_check.emit("- fine")
        return []

    def reports_fail():
        gpu_check.emit("| case | FAIL |")
        return ["1 case(s) outside tolerance or raising"]

    def raises():
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(gpu_check, "PARTS", [("correct", "2. correct", reports_fail), ("speed", "4. speed", passes)])
    assert gpu_check.main() == 1  # a FAIL row alone (the old script exited 0 here)
    assert report(gpu_check).strip().splitlines()[-1] == (
        "**Result: FAIL** in 1 part(s): correct (1 case(s) outside tolerance or raising)."
    )

    gpu_check.LINES.clear()
    monkeypatch.setattr(
        gpu_check,
        "PARTS",
        [("correct", "2. correct", reports_fail), ("big", "3. big", raises), ("speed", "4. speed", passes)],
    )
    assert gpu_check.main() == 1
    assert report(gpu_check).strip().splitlines()[-1] == (
        "**Result: FAIL** in 2 part(s): correct (1 case(s) outside tolerance or raising); "
        "big (RuntimeError: simulated crash)."
    )

    gpu_check.LINES.clear()
    monkeypatch.setattr(gpu_check, "PARTS", [("speed", "4. speed", passes)])
    assert gpu_check.main() == 0
    assert report(gpu_check).strip().splitlines()[-1] == "**Result: PASS**: no part reported a failure."


def fake_run(stdout: str, returncode: int = 0):
    """Stands in for subprocess.run in the script: a finished child with this output."""
    return lambda args, **kwargs: subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="")


def force_pytest(gpu_check, monkeypatch):
    out = "FAILED tests/test_cuda_path.py::test_x - AssertionError\n1 failed, 40 passed in 9.0s\n"
    monkeypatch.setattr(
        gpu_check,
        "subprocess",
        types.SimpleNamespace(run=fake_run(out, returncode=1), TimeoutExpired=subprocess.TimeoutExpired),
    )
    return gpu_check.part_pytest, "pytest exited 1 (1 failed, 40 passed in 9.0s)"


def force_correct(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check, "compare", lambda *args: (0.5, 0.0, 0.0))  # y off by 50%
    return gpu_check.part_correct, "10 case(s) outside tolerance or raising"


def force_big(gpu_check, monkeypatch):
    reference = gpu_check.p_pool2d

    def off_by_10_percent(x, alpha, kernel, backend):  # the "triton" result is wrong; the reference is right
        y = reference(x.float(), alpha, kernel, backend="reference").to(x.dtype)
        return y * 1.1 if backend == "triton" else y

    monkeypatch.setattr(gpu_check, "p_pool2d", off_by_10_percent)
    return gpu_check.part_big, "max rel err"


def force_train(gpu_check, monkeypatch):
    import polypool.models

    class NaNModel(torch.nn.Module):  # a VGG16 stand-in whose loss is NaN
        def __init__(self, **kwargs):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, images):
            return images * self.weight

        def loss(self, logits, masks):
            return logits.sum() * float("nan")

    monkeypatch.setattr(polypool.models, "SegmentationModel", NaNModel)
    return gpu_check.part_train, "a training loss is not finite"


def force_probe_fallback(gpu_check, monkeypatch):
    out = "RESULT matches the reference: False; warnings: 1; failure recorded: 'x'\nVERDICT FAIL\n"
    monkeypatch.setattr(
        gpu_check, "subprocess", types.SimpleNamespace(run=fake_run(out), TimeoutExpired=subprocess.TimeoutExpired)
    )
    return gpu_check.part_probes, "the no-compiler fallback: matches the reference: False"


def force_probe_failure_recorded(gpu_check, monkeypatch):
    out = "RESULT matches the reference: True; warnings: 0; failure recorded: 'none'\nVERDICT ok\n"
    monkeypatch.setattr(
        gpu_check, "subprocess", types.SimpleNamespace(run=fake_run(out), TimeoutExpired=subprocess.TimeoutExpired)
    )
    monkeypatch.setattr(triton_fused, "failure", lambda: "RuntimeError: simulated")
    return gpu_check.part_probes, "the Triton path recorded a failure: RuntimeError: simulated"


@pytest.mark.parametrize(
    "force", [force_pytest, force_correct, force_big, force_train, force_probe_fallback, force_probe_failure_recorded]
)
def test_each_part_reports_its_failures(gpu_check, monkeypatch, force):
    """Each part returns what failed in it (main() turns that into the exit status): a failed pytest run, a FAIL row
    of the comparison, the >2^31-element check, a non-finite training loss, a failed probe."""
    part, expected = force(gpu_check, monkeypatch)
    problems = part()
    assert problems and expected in "; ".join(problems), problems


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path):
    """``--smoke`` runs every part but pytest on tiny shapes through Triton's interpreter (about 80 s on 2 CPU
    cores), exits 0, and its report ends with the PASS line."""
    out = tmp_path / "smoke.md"
    env = {k: v for k, v in os.environ.items() if k not in ("POLYPOOL_TRITON", "TRITON_INTERPRET")}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    assert text.strip().splitlines()[-1] == "**Result: PASS**: no part reported a failure.", text[-2000:]
    assert "**0 case(s) outside tolerance.**" in text and "FAIL" not in text


def test_readme_benchmark_section_quotes_the_committed_results():
    """The README's benchmark section quotes results/bench/cpu_2core.md: every decimal number in it is in that file
    (it once quoted a 1.34x training step and 0.5x saved for backward that no committed run had), and it claims no
    GPU time for make gpu-check, which has not run on a GPU."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Benchmark\n") :]
    section = section[: section.index("\n## ", 1)]
    results = (ROOT / "results" / "bench" / "cpu_2core.md").read_text()
    numbers = re.findall(r"(?<![\d.])\d+\.\d+(?![\d.])", section)
    assert len(numbers) > 20, section
    missing = [n for n in numbers if not re.search(rf"(?<![\d.]){re.escape(n)}(?!\d)", results)]
    assert not missing, f"README numbers not in results/bench/cpu_2core.md: {missing}"
    assert "`results/bench/cpu_2core.md`" in section
    assert "budgeted at 8 minutes" in section and "not yet run on a GPU" in section and "H100" not in section
