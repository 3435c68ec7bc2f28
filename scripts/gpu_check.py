"""Acceptance check of the CUDA path of P-pooling on one GPU (``make gpu-check``): budgeted at 8 minutes (``--budget``);
not yet run on a GPU.

    python scripts/gpu_check.py                  # writes results/bench/<gpu>.md
    python scripts/gpu_check.py --out FILE.md
    python scripts/gpu_check.py --smoke          # tiny shapes on the CPU through Triton's interpreter (no GPU):
                                                 # checks this script, measures nothing

Parts, each timed and guarded (a failure is reported and the next part runs):
 1. the Triton test files on the GPU (pytest: tests/test_p_pool2d_triton.py, test_cuda_path.py,
    test_p_pool2d_subnormal.py, test_relu_hint.py, test_compile.py, test_p_pool2d_dense.py (the fused dense-alpha
    branch), test_p_pool2d_count_include_pad.py);
 2. Triton against the reference op in fp32, fp16 and bf16 on the paper's pooling shapes (VGG16 at 224,
    VGG16-LargeFOV at 321, the ResNet stem, inception_v3's 3x3/1 pools), per-channel and dense alpha, values and
    both gradients, plus channels_last;
 3. one input of more than 2^31 elements (bf16), forward and backward, checked at its first and last windows;
 4. forward+backward time against max_pool2d, with the GB/s of each and of a large device-to-device copy (the
    ceiling), from benchmarks/bench_pooling.py;
 5. VGG16-LargeFOV training steps under bf16 autocast, max pooling against P-pooling (dense alpha);
 6. probes: a fresh process without a C compiler and with an empty Triton cache (the fallback), CUDA-graph capture
    of a hinted (ReLU-input) forward, torch.compile (Inductor) through the registered Triton op, and the Triton
    path's state at the end.

Each part reports its failures (a failed test, a FAIL row, a probe that fails); the report ends with a summary line
naming the failed parts. Exit status: 0 when no part failed, 1 when one did, 2 without a GPU (and no ``--smoke``).
Parts skipped for time are named in the summary but do not fail the check.

The Triton path runs in strict mode here (``POLYPOOL_TRITON=strict``): a failure raises instead of falling back, so
every number is the Triton kernels' own.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="the report (default: results/bench/<gpu>.md; with --smoke: a temporary file)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU through Triton's interpreter")
    parser.add_argument("--budget", type=float, default=480, help="seconds for everything (parts are skipped after)")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: pytest correct big speed train probes")
    return parser.parse_args(argv)


ARGS = parse_args()
if ARGS.smoke:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
os.environ["POLYPOOL_TRITON"] = "strict"

import torch  # noqa: E402

if not ARGS.smoke and not torch.cuda.is_available():
    print(
        f"make gpu-check needs a CUDA GPU, and torch sees none (torch {torch.__version__}, built for CUDA "
        f"{torch.version.cuda}; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). Nothing was "
        f"measured. Run it on a machine with an NVIDIA GPU, or `python scripts/gpu_check.py --smoke` to check the "
        f"script itself on the CPU.",
        file=sys.stderr,
    )
    sys.exit(2)

from polypool.pooling import p_pool2d, triton_fused  # noqa: E402
from polypool.pooling.geometry import Window  # noqa: E402

DEVICE = torch.device("cpu" if ARGS.smoke else "cuda")
START = time.time()
LINES: list[str] = []
OUT: Path


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)
    OUT.write_text("\n".join(LINES) + "\n")


def left() -> float:
    return ARGS.budget - (time.time() - START)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def gpu_name() -> str:
    return "cpu-smoke" if ARGS.smoke else torch.cuda.get_device_name(DEVICE)


# (name, (N, C, H, W), kernel, stride, padding, ceil_mode): the pools P-pooling replaces in the paper's networks
PAPER_SHAPES = [
    ("vgg16@224.pool1", (8, 64, 224, 224), 2, 2, 0, False),
    ("vgg16@224.pool3", (8, 256, 56, 56), 2, 2, 0, False),
    ("vgg16@224.pool5", (8, 512, 14, 14), 2, 2, 0, False),
    ("largefov@321.pool1", (10, 64, 321, 321), 3, 2, 1, False),
    ("largefov@321.pool4", (10, 512, 41, 41), 3, 1, 1, False),
    ("resnet.stem", (10, 64, 161, 161), 3, 2, 1, False),
    ("inception_v3.Mixed_5b", (8, 192, 35, 35), 3, 1, 1, False),
    ("inception_v3.Mixed_7b", (8, 1280, 8, 8), 3, 1, 1, False),
    ("odd 13x11 k3s2p1 ceil", (3, 5, 13, 11), 3, 2, 1, True),
]
SMOKE_SHAPES = [("smoke k2s2", (1, 3, 8, 8), 2, 2, 0, False), ("smoke k3s2p1 ceil", (1, 2, 7, 9), 3, 2, 1, True)]
RTOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def runs_through(y, name="PPool2dTriton") -> bool:
    """Whether y was computed by the Triton path (polypool.pooling.fused_interface.runs_through)."""
    from polypool.pooling.fused_interface import runs_through as through

    return through(y, name)


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------------ parts


def part_pytest() -> list[str]:
    files = [
        "tests/test_p_pool2d_triton.py",
        "tests/test_cuda_path.py",
        "tests/test_p_pool2d_subnormal.py",
        "tests/test_relu_hint.py",
        "tests/test_compile.py",
        "tests/test_p_pool2d_dense.py",
        "tests/test_p_pool2d_count_include_pad.py",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("POLYPOOL_TRITON", "TRITON_INTERPRET")}
    timeout = max(30, min(240, left() - 240))
    t0 = time.time()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *files],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        summary = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
        emit(
            f"- `pytest {' '.join(files)}` on {gpu_name()}: {summary[-1] if summary else 'no summary'} "
            f"({time.time() - t0:.0f} s)"
        )
        for line in done.stdout.splitlines():
            if line.startswith(("FAILED", "ERROR")):
                emit(f"  - {line[:300]}")
    except subprocess.TimeoutExpired:
        emit(f"- pytest timed out after {timeout:.0f} s")
        return [f"pytest timed out after {timeout:.0f} s"]
    if done.returncode != 0:  # failed tests, errors, or nothing collected (5)
        return [f"pytest exited {done.returncode} ({summary[-1] if summary else 'no summary'})"]
    return []


def compare(shape, k, s, p, ceil, dtype, alpha_kind, channels_last=False) -> tuple[float, float, float]:
    """Max relative errors (y, dx, dalpha) of Triton against the reference (fp32, on the same rounded values)."""
    torch.manual_seed(0)
    x = torch.rand(shape, device=DEVICE)
    x = (x - 0.2).clamp_min(0) * 4  # ReLU-like: zeros and a spread of values
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out_h, out_w = Window.make(k, s, p, ceil).output_size(*shape[-2:])
    alpha = (
        torch.rand(shape[1], 1, 1, device=DEVICE) * 49 + 1
        if alpha_kind == "channel"
        else torch.rand(shape[0], shape[1], out_h, out_w, device=DEVICE) * 49 + 1
    )
    xt, at = x.detach().requires_grad_(True), alpha.clone().requires_grad_(True)
    y = p_pool2d(xt, at, k, s, p, ceil, backend="triton")
    assert runs_through(y), "not the Triton path"
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last), "channels_last not kept"
    g = torch.rand_like(y, memory_format=torch.contiguous_format)
    y.backward(g)
    xr, ar = x.detach().float().contiguous().requires_grad_(True), alpha.clone().requires_grad_(True)
    yr = p_pool2d(xr, ar, k, s, p, ceil, backend="reference")
    yr.backward(g.float())
    return rel_error(y, yr), rel_error(xt.grad, xr.grad), rel_error(at.grad, ar.grad)


def part_correct() -> list[str]:
    emit("| shape | dtype | alpha | layout | y rel err | dx rel err | dalpha rel err | verdict |")
    emit("|---|---|---|---|---:|---:|---:|---|")
    shapes = SMOKE_SHAPES if ARGS.smoke else PAPER_SHAPES
    failures = 0
    for name, shape, k, s, p, ceil in shapes:
        # every dtype with per-channel alpha on NCHW; dense alpha and channels_last in bf16 (each case compiles)
        cases = [(dtype, "channel", False) for dtype in (torch.float32, torch.float16, torch.bfloat16)]
        cases += [(torch.bfloat16, "dense", False), (torch.bfloat16, "channel", True)]
        for dtype, alpha_kind, channels_last in cases:
            if left() < 200:
                emit("| (the rest skipped: time) | | | | | | | |")
                return _cases_failed(failures)
            layout = "channels_last" if channels_last else "NCHW"
            try:
                ey, ex, ea = compare(shape, k, s, p, ceil, dtype, alpha_kind, channels_last)
                # y to the dtype's rounding; gradients also carry the fp32 conditioning of (a+1) - a q/r
                ok = ey <= 2 * RTOL[dtype] and ex <= 2 * RTOL[dtype] + 1e-4 and ea <= max(2 * RTOL[dtype], 1e-3)
                failures += not ok
                emit(
                    f"| {name} {tuple(shape)} k{k}s{s}p{p}{' ceil' if ceil else ''} | {str(dtype)[6:]} | "
                    f"{alpha_kind} | {layout} | {ey:.1e} | {ex:.1e} | {ea:.1e} | {'ok' if ok else 'FAIL'} |"
                )
            except Exception as error:
                failures += 1
                emit(
                    f"| {name} | {str(dtype)[6:]} | {alpha_kind} | {layout} | | | | EXCEPTION "
                    f"{type(error).__name__}: {str(error)[:150]} |"
                )
            finally:
                if DEVICE.type == "cuda":
                    torch.cuda.empty_cache()
    emit(f"\n**{failures} case(s) outside tolerance.**")
    return _cases_failed(failures)


def _cases_failed(failures: int) -> list[str]:
    return [f"{failures} case(s) outside tolerance or raising"] if failures else []


def part_big() -> list[str]:
    """More than 2^31 elements: int64 indexing. bf16 (1, 8, 16384, 16400) = 2.149e9 elements, 4.3 GB."""
    if ARGS.smoke:
        triton_fused.INT64_FROM = 0  # the int64 variant on a tiny input
        shape = (1, 2, 8, 10)
    else:
        shape = (1, 8, 16384, 16400)
    x = torch.rand(shape, device=DEVICE, dtype=torch.bfloat16).requires_grad_(True)
    emit(f"- input {shape} bf16: {x.numel():,} elements ({x.numel() / 2**31:.4f} x 2^31)")
    t0 = time.time()
    y = p_pool2d(x, 30.0, 2, backend="triton")
    g = torch.ones_like(y)
    y.backward(g)
    sync()
    emit(f"- forward + backward through Triton: {time.time() - t0:.2f} s (first call: includes compiling)")
    worst = 0.0
    for plane in (0, shape[1] - 1):
        for rows, cols in ((slice(0, 4), slice(0, 4)), (slice(-4, None), slice(-4, None))):
            xs = x.detach()[:, plane : plane + 1, rows, cols].float().requires_grad_(True)
            ys = p_pool2d(xs, 30.0, 2, backend="reference")
            ys.backward(torch.ones_like(ys))
            got_y = y.detach()[:, plane : plane + 1][..., _half(rows), _half(cols)]
            got_dx = x.grad[:, plane : plane + 1, rows, cols]
            worst = max(worst, rel_error(got_y, ys), rel_error(got_dx, xs.grad))
    ok = worst <= 2 * RTOL[torch.bfloat16]
    emit(
        f"- first and last windows of the first and last plane against the reference: max rel err {worst:.1e} "
        f"({'ok' if ok else 'FAIL'})"
    )
    del x, y, g
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    return [] if ok else [f"max rel err {worst:.1e} against the reference (tolerance {2 * RTOL[torch.bfloat16]:.1e})"]


def _half(s: slice) -> slice:
    return slice(s.start // 2 if s.start is not None else None, s.stop // 2 if s.stop is not None else None)


def part_speed() -> list[str]:
    """Measures only: its failures are exceptions."""
    import bench_pooling as bench

    shapes = (
        bench.QUICK_SHAPES[:1]
        if ARGS.smoke
        else [s for s in bench.SHAPES if s.name.startswith(("vgg16@224", "resnet", "inception"))]
    )
    reps = 2 if ARGS.smoke else 20
    for dtype in (torch.bfloat16, torch.float32):
        emit(f"\n#### {str(dtype)[6:]}\n")
        for shape in shapes:
            if left() < 120:
                emit("- (the rest skipped: time)")
                return []
            size = (1, 2, 8, 8) if ARGS.smoke else shape.size
            x = torch.rand(size, device=DEVICE, dtype=dtype).requires_grad_(True)
            rows = bench.make_rows(shape, DEVICE, baselines=False)
            rows = {
                name: rows[name]
                for name in ("max_pool2d", "avg_pool2d", "p_pool2d reference", "p_pool2d (ours, default)")
            }
            copy = bench.copy_bandwidth(x, reps) if DEVICE.type == "cuda" else None
            emit(bench.format_table(shape, bench.measure(rows, x, reps), x, copy) + "\n")
            del x
    return []


def part_train() -> list[str]:
    from polypool.models import SegmentationModel

    batch, crop, reps = (2, 65, 1) if ARGS.smoke else (10, 321, 10)
    torch.manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, device=DEVICE)
    masks = torch.randint(0, 21, (batch, crop, crop), device=DEVICE)
    times, ok = {}, True
    for name in ("max", "ppool"):
        model = SegmentationModel(backbone="vgg16", pooling=name).to(DEVICE)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(model=model, optimizer=optimizer):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
                loss = model.loss(model(images), masks)
            loss.backward()
            optimizer.step()
            return loss

        for _ in range(2 if not ARGS.smoke else 1):
            loss = step()  # warm-up: compiles, cudnn autotuning
        ok &= bool(torch.isfinite(loss))
        sync()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            sync()
            samples.append((time.perf_counter() - t0) * 1e3)
        times[name] = sorted(samples)[len(samples) // 2]
        del model, optimizer
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    emit(f"| pooling | step ms (median of {reps}) | / max |")
    emit("|---|---:|---:|")
    emit(f"| max | {times['max']:.1f} | 1.00x |")
    emit(f"| P-pooling (dense alpha) | {times['ppool']:.1f} | {times['ppool'] / times['max']:.2f}x |")
    emit(f"\nbatch {batch}, {crop}x{crop}, SGD, bf16 autocast; losses finite: {ok}")
    return [] if ok else ["a training loss is not finite"]


FALLBACK_CHILD = textwrap.dedent("""
    import warnings, torch
    from polypool.pooling import p_pool2d, triton_fused
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.rand(2, 4, 8, 8, device=device, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = p_pool2d(x, 3.0, 2, backend="auto" if device == "cuda" else "reference")
        y.sum().backward()
    messages = [str(w.message) for w in caught if "Triton" in str(w.message)]
    same = torch.allclose(y, p_pool2d(x, 3.0, 2, backend="reference"), rtol=1e-5, atol=1e-6)
    print("RESULT", f"matches the reference: {same}; warnings: {len(messages)}; failure recorded: "
          f"{(triton_fused.failure() or 'none')[:200]!r}")
    # right answer, and a fallback (if any) that said so: a silent one would hide a broken path
    print("VERDICT", "ok" if same and (triton_fused.failure() is None or messages) else "FAIL")
""")


COMPILE_RTOL = 1e-3  # torch.compile against eager, both through the same fp32 kernels: a wrong route, not rounding


def part_probes() -> list[str]:
    problems = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, CC="/bin/false", TRITON_CACHE_DIR=cache, POLYPOOL_TRITON="1")
        try:
            done = subprocess.run(
                [sys.executable, "-c", FALLBACK_CHILD], env=env, capture_output=True, text=True, timeout=120
            )
            result = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT")]
            emit(
                f"- no C compiler (CC=/bin/false), empty Triton cache, fresh process: "
                f"{result[-1] if result else 'no result, rc ' + str(done.returncode) + ': ' + done.stderr[-300:]}"
            )
            if "VERDICT ok" not in done.stdout.splitlines():
                problems.append(
                    "the no-compiler fallback: " + (result[-1] if result else f"no result (rc {done.returncode})")
                )
        except subprocess.TimeoutExpired:
            emit("- no-compiler probe: timed out")
            problems.append("the no-compiler fallback timed out")
    if DEVICE.type == "cuda":
        try:
            x = torch.rand(4, 64, 56, 56, device=DEVICE)
            p_pool2d(x, 30.0, 2, input_nonnegative=True)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream), torch.cuda.graph(graph):
                y = p_pool2d(x, 30.0, 2, input_nonnegative=True)
            graph.replay()
            sync()
            same = torch.allclose(y, p_pool2d(x, 30.0, 2, backend="reference"), rtol=1e-5, atol=1e-6)
            emit(
                f"- CUDA-graph capture of a forward with the ReLU hint (no negative check, no sync): OK, replay "
                f"matches the reference: {same}"
            )
            if not same:
                problems.append("the CUDA-graph replay does not match the reference")
        except Exception as error:
            emit(f"- CUDA-graph capture with the ReLU hint FAILS: {type(error).__name__}: {str(error)[:200]}")
            problems.append(f"CUDA-graph capture: {type(error).__name__}")
    if DEVICE.type == "cuda" and left() > 60:  # Inductor with the registered Triton op (triton_op + wrap_triton)
        try:
            x = torch.rand(8, 64, 56, 56, device=DEVICE, requires_grad=True)
            a = torch.full((64, 1, 1), 30.0, device=DEVICE, requires_grad=True)

            def f(x, a):
                return p_pool2d(torch.relu(x), a, 3, 2, 1, input_nonnegative=True)

            torch._dynamo.reset()
            t0 = time.time()
            compiled = torch.compile(f)
            y = compiled(x, a)
            g = torch.rand_like(y)
            gx, ga = torch.autograd.grad(y, (x, a), g)
            sync()
            first = time.time() - t0
            ye = f(x, a)
            gxe, gae = torch.autograd.grad(ye, (x, a), g)
            errors = [rel_error(u, v.float()) for u, v in ((y, ye), (gx, gxe), (ga, gae))]
            emit(
                f"- torch.compile (Inductor, the registered Triton op): compile + first fwd/bwd {first:.1f} s; "
                f"max rel err vs eager y/dx/dalpha {errors[0]:.1e}/{errors[1]:.1e}/{errors[2]:.1e}"
            )
            if max(errors) > COMPILE_RTOL:
                problems.append(f"torch.compile differs from eager by {max(errors):.1e} (tolerance {COMPILE_RTOL})")
        except Exception as error:
            emit(f"- torch.compile with the registered Triton op FAILS: {type(error).__name__}: {str(error)[:300]}")
            problems.append(f"torch.compile: {type(error).__name__}")
    emit(f"- Triton path at the end: failure recorded: {triton_fused.failure() or 'none'}")
    if triton_fused.failure():
        problems.append(f"the Triton path recorded a failure: {triton_fused.failure()[:200]}")
    return problems


PARTS = [
    ("pytest", "1. The Triton test files on the GPU", part_pytest),
    ("correct", "2. Triton against the reference op", part_correct),
    ("big", "3. An input of more than 2^31 elements", part_big),
    ("speed", "4. Forward+backward against max_pool2d, and the copy ceiling", part_speed),
    ("train", "5. VGG16-LargeFOV training steps, bf16 autocast", part_train),
    ("probes", "6. Probes", part_probes),
]


def main() -> int:
    global OUT
    if ARGS.out:
        OUT = Path(ARGS.out)
    elif ARGS.smoke:
        OUT = Path(tempfile.mkdtemp(prefix="gpu_check_")) / "cpu-smoke.md"
    else:
        OUT = ROOT / "results" / "bench" / (re.sub(r"[^A-Za-z0-9]+", "_", gpu_name()).strip("_").lower() + ".md")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    import triton

    device = (
        f"{gpu_name()}, CUDA {torch.version.cuda}, driver capability "
        f"{'.'.join(map(str, torch.cuda.get_device_capability(DEVICE)))}"
        if DEVICE.type == "cuda"
        else f"CPU {platform.machine()} through Triton's interpreter (smoke run: nothing here is a measurement)"
    )
    emit(f"# P-pooling CUDA path: acceptance check on {gpu_name()}")
    emit()
    emit(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {device}; torch {torch.__version__}, triton "
        f"{triton.__version__}; command `make gpu-check` (`python scripts/gpu_check.py"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}`). Triton in strict mode: no silent fallback."
    )
    failed: dict[str, str] = {}  # part -> what failed
    out_of_time = []
    for key, title, part in PARTS:
        emit()
        emit(f"## {title}")
        emit()
        if key in ARGS.skip or (ARGS.smoke and key == "pytest"):
            emit("- skipped (--skip)" if key in ARGS.skip else "- skipped (smoke run)")
            continue
        if left() < 30:
            emit("- skipped: the time budget is spent")
            out_of_time.append(key)
            continue
        t0 = time.time()
        try:
            problems = part()
        except Exception as error:
            problems = [f"{type(error).__name__}: {str(error)[:200]}"]
            emit(f"- **EXCEPTION** {type(error).__name__}: {str(error)[:400]}")
            traceback.print_exc()
        if problems:
            failed[key] = "; ".join(problems)
        emit(f"\n({time.time() - t0:.0f} s)")
    emit()
    emit(f"Total {time.time() - START:.0f} s.")
    emit()
    emit(summary(failed, out_of_time))
    print(f"\nreport: {OUT}")
    return 1 if failed else 0


def summary(failed: dict[str, str], out_of_time: list[str]) -> str:
    """The report's last line: the verdict, and the failed parts with what failed in each."""
    not_run = f" Not run (time budget): {', '.join(out_of_time)}." if out_of_time else ""
    if not failed:
        return f"**Result: PASS**: no part reported a failure.{not_run}"
    parts = "; ".join(f"{key} ({why})" for key, why in failed.items())
    return f"**Result: FAIL** in {len(failed)} part(s): {parts}.{not_run}"


if __name__ == "__main__":
    sys.exit(main())
