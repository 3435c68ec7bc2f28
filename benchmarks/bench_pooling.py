"""Pooling benchmark: forward and forward+backward time, and the extra memory kept for backward.

Every row is measured side by side on the same input in one run (rows interleaved within each repetition,
median taken), and reported as a ratio to ``F.max_pool2d``: the machine is noisy, so only the ratios mean much.

    python benchmarks/bench_pooling.py                 # all shapes, all rows
    python benchmarks/bench_pooling.py --quick         # two small shapes, for a smoke run
    python benchmarks/bench_pooling.py --out results/bench/cpu.md

"Extra memory" is the bytes of tensors that autograd saves for backward, not counting the input and the output
(which the surrounding network keeps anyway), divided by the input's bytes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from polypool.pooling import p_pool2d


@dataclass(frozen=True)
class Shape:
    name: str
    size: tuple[int, int, int, int]
    kernel: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False


# VGG16 at a 224 crop, batch 8 (its five 2x2/2 max pools), and the ResNet stem pool (3x3/2, pad 1).
SHAPES = [
    Shape("vgg16.pool1", (8, 64, 224, 224), 2, 2),
    Shape("vgg16.pool2", (8, 128, 112, 112), 2, 2),
    Shape("vgg16.pool3", (8, 256, 56, 56), 2, 2),
    Shape("vgg16.pool4", (8, 512, 28, 28), 2, 2),
    Shape("vgg16.pool5", (8, 512, 14, 14), 2, 2),
    Shape("resnet.stem_pool", (8, 64, 112, 112), 3, 2, 1),
]
QUICK_SHAPES = [Shape("vgg16.pool3", (8, 256, 56, 56), 2, 2), Shape("resnet.stem_pool", (2, 64, 112, 112), 3, 2, 1)]

Row = Callable[[torch.Tensor], torch.Tensor]


def naive_p_pool(alpha: torch.Tensor, s: Shape) -> Row:
    """The composition a user would write first: two average pools of powers, divided, through autograd."""
    def row(x):
        num = F.avg_pool2d(x.pow(alpha + 1), s.kernel, s.stride, s.padding, s.ceil_mode)
        return num / F.avg_pool2d(x.pow(alpha), s.kernel, s.stride, s.padding, s.ceil_mode)
    return row


def make_rows(s: Shape, channels: int) -> dict[str, tuple[Row, list[torch.Tensor]]]:
    """name -> (function of x, learned parameters that get gradients too)."""
    alpha = torch.tensor(30.0, requires_grad=True)  # the authors' initial alpha, one per layer
    pool_args = dict(kernel_size=s.kernel, stride=s.stride, padding=s.padding, ceil_mode=s.ceil_mode)
    rows = {
        "max_pool2d": (lambda x: F.max_pool2d(x, **pool_args), []),
        "avg_pool2d": (lambda x: F.avg_pool2d(x, **pool_args), []),
        "naive P-pool (autograd)": (naive_p_pool(alpha, s), [alpha]),
        "p_pool2d reference": (lambda x: p_pool2d(x, alpha, **pool_args, backend="reference"), [alpha]),
        "p_pool2d (ours, default)": (lambda x: p_pool2d(x, alpha, **pool_args), [alpha]),
    }
    rows.update(extra_rows(s, channels))
    return rows


def extra_rows(s: Shape, channels: int) -> dict[str, tuple[Row, list[torch.Tensor]]]:
    """The baseline layers of the registry, when it exists (issue "Baseline poolings")."""
    try:
        from polypool.pooling import build_pooling, POOLING_NAMES
    except ImportError:
        return {}
    rows = {}
    for name in POOLING_NAMES:
        if name in ("max", "avg", "ppool"):
            continue  # measured above
        layer = build_pooling(name, s.kernel, s.stride, s.padding, s.ceil_mode, channels=channels)
        rows[f"{name} (layer)"] = (layer, list(layer.parameters()))
    return rows


def saved_bytes(row: Row, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, less the input and the output."""
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype)] = t.untyped_storage().nbytes() if t.data_ptr() else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = row(x)
    free = {(x.data_ptr(), x.dtype), (y.data_ptr(), y.dtype)}
    return sum(nbytes for key, nbytes in saved.items() if key not in free)


def measure(rows: dict, x: torch.Tensor, reps: int) -> dict[str, dict[str, float]]:
    grads = {}
    times = {name: {"fwd": [], "fwdbwd": []} for name in rows}
    for name, (row, _) in rows.items():  # warm-up, and the upstream gradient of each row's output shape
        with torch.no_grad():
            grads[name] = torch.rand_like(row(x))
    for _ in range(reps):
        for name, (row, params) in rows.items():
            t0 = time.perf_counter()
            with torch.no_grad():
                row(x)
            t1 = time.perf_counter()
            y = row(x)
            torch.autograd.backward(y, grads[name], inputs=[x, *params])
            t2 = time.perf_counter()
            times[name]["fwd"].append((t1 - t0) * 1e3)
            times[name]["fwdbwd"].append((t2 - t1) * 1e3)
            x.grad = None
            for p in params:
                p.grad = None
    result = {}
    for name, (row, _) in rows.items():
        result[name] = {
            "fwd": statistics.median(times[name]["fwd"]),
            "fwdbwd": statistics.median(times[name]["fwdbwd"]),
            "extra_mem": saved_bytes(row, x) / (x.numel() * x.element_size()),
        }
    return result


def format_table(shape: Shape, result: dict) -> str:
    base = result["max_pool2d"]
    lines = [
        f"### {shape.name}: input {tuple(shape.size)}, kernel {shape.kernel}, stride {shape.stride}, "
        f"padding {shape.padding}",
        "",
        "| row | fwd ms | fwd+bwd ms | fwd / max | fwd+bwd / max | extra memory / input |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result.items():
        lines.append(f"| {name} | {r['fwd']:.2f} | {r['fwdbwd']:.2f} | {r['fwd'] / base['fwd']:.2f}x | "
                     f"{r['fwdbwd'] / base['fwdbwd']:.2f}x | {r['extra_mem']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small shapes, 2 repetitions")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per row (the median is reported)")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    reps = 2 if args.quick else args.reps
    torch.manual_seed(0)
    header = (f"# Pooling benchmark (CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"{platform.processor() or platform.machine()}), fp32, median of {reps}\n")
    print(header, flush=True)
    tables = [header]
    for shape in shapes:
        x = torch.rand(shape.size).requires_grad_(True)
        table = format_table(shape, measure(make_rows(shape, shape.size[1]), x, reps))
        print(table + "\n", flush=True)
        tables.append(table + "\n")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
