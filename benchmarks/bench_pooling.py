"""Pooling benchmark: forward and forward+backward time, extra memory kept for backward, and a training step.

Every row is measured side by side on the same input in one run (rows interleaved within each repetition,
median taken), and reported as a ratio to ``F.max_pool2d``: the machine is noisy, so only the ratios mean much.

    python benchmarks/bench_pooling.py                        # every shape and row, then the training step
    python benchmarks/bench_pooling.py --quick                # two small shapes, for a smoke run
    python benchmarks/bench_pooling.py --shapes vgg16@224 --rows core --no-train-step
    python benchmarks/bench_pooling.py --out results/bench/cpu_2core.md

Rows: ``max_pool2d``, ``avg_pool2d``, the naive composition (pow, two avg_pools, divide, through autograd), our
reference op, our default op (the fused kernel of the device: Triton on CUDA, C++ on CPU), the ``PPool2d`` layers
as a network has them (after a ReLU; layer, channel and dense alpha, the dense branch fused and unfused: their
fwd+bwd includes the branch's parameter gradients), and with ``--rows all`` the baseline layers of the registry.
Shapes: VGG16's five pools at 224 and 512 crops and in both layouts of configs/voc at 321 (vgg16_20m, largefov),
the ResNet stem pool and inception_v3's 3x3 stride-1 average pools (P-pooling replaces them too), batch 8. The
training step: VGG16 in both layouts, max pooling against dense-alpha P-pooling.

"Extra memory" is the bytes of tensors that autograd saves for backward, not counting the input, the output and
the layer's own parameters (which the surrounding network keeps anyway), divided by the input's bytes. On CUDA, "GB/s" is the bandwidth
floor of a pooling (forward: read x, write y; backward: read x and dy, write dx) over the measured fwd+bwd time,
and "% copy" compares it with a device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from polypool.pooling import POOLING_NAMES, PPool2d, build_pooling, p_pool2d


@dataclass(frozen=True)
class Shape:
    name: str
    size: tuple[int, int, int, int]
    kernel: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False
    count_include_pad: bool = True


def vgg16_pools(crop: int, batch: int = 8) -> list[Shape]:
    """VGG16's five 2x2/2 max pools at a square crop."""
    sizes = [(64, crop), (128, crop // 2), (256, crop // 4), (512, crop // 8), (512, crop // 16)]
    return [Shape(f"vgg16@{crop}.pool{i + 1}", (batch, c, s, s), 2, 2) for i, (c, s) in enumerate(sizes)]


# inception_v3 at 299: the 3x3/1 (pad 1) average pools of the Mixed_5 (35x35), Mixed_6 (17x17), Mixed_7 (8x8) blocks
INCEPTION_POOLS = [
    Shape("inception_v3.Mixed_5b.avgpool", (8, 192, 35, 35), 3, 1, 1),
    Shape("inception_v3.Mixed_6b.avgpool", (8, 768, 17, 17), 3, 1, 1),
    Shape("inception_v3.Mixed_7b.avgpool", (8, 1280, 8, 8), 3, 1, 1),
]


def vgg16_layout_pools(layout: str, crop: int = 321, batch: int = 8) -> list[Shape]:
    """The five pools of a VGG16 layout of configs/voc at its crop: ``vgg16_20m`` (vgg.yaml, the authors': 2x2/2
    pad 1 three times, 2x2/1, 3x3/1 pad 1) or ``largefov`` (vgg_largefov.yaml: 3x3/2 pad 1 three times, then 3x3/1
    pad 1 twice), with the map sizes the network gives them."""
    from polypool.models.networks import VGG16_POOLS

    shapes, size = [], crop
    for i, (channels, (kernel, stride, padding)) in enumerate(zip((64, 128, 256, 512, 512), VGG16_POOLS[layout])):
        shapes.append(Shape(f"{layout}@{crop}.pool{i + 1}", (batch, channels, size, size), kernel, stride, padding))
        size = (size + 2 * padding - kernel) // stride + 1
    return shapes


SHAPES = [
    *vgg16_pools(224),
    *vgg16_pools(512),
    *vgg16_layout_pools("vgg16_20m"),
    *vgg16_layout_pools("largefov"),
    Shape("resnet.stem_pool", (8, 64, 112, 112), 3, 2, 1),
    *INCEPTION_POOLS,
]
QUICK_SHAPES = [Shape("vgg16@224.pool3", (8, 256, 56, 56), 2, 2), Shape("resnet.stem_pool", (2, 64, 112, 112), 3, 2, 1)]

Row = Callable[[torch.Tensor], torch.Tensor]
CORE_ROWS = (
    "max_pool2d",
    "avg_pool2d",
    "naive P-pool (autograd)",
    "p_pool2d reference",
    "p_pool2d (ours, default)",
    "P-pool layer alpha",
    "P-pool channel alpha",
    "P-pool dense alpha (fused)",
    "P-pool dense alpha (unfused)",
)


def naive_p_pool(alpha: torch.Tensor, s: Shape) -> Row:
    """The composition a user would write first: two average pools of powers, divided, through autograd."""

    def row(x):
        num = F.avg_pool2d(x.pow(alpha + 1), s.kernel, s.stride, s.padding, s.ceil_mode)
        return num / F.avg_pool2d(x.pow(alpha), s.kernel, s.stride, s.padding, s.ceil_mode)

    return row


def make_rows(s: Shape, device: torch.device, baselines: bool) -> dict[str, tuple[Row, list[torch.Tensor]]]:
    """name -> (function of x, learned parameters that get gradients too)."""
    alpha = torch.tensor(30.0, device=device, requires_grad=True)  # the authors' initial alpha, one per layer
    pool_args = dict(kernel_size=s.kernel, stride=s.stride, padding=s.padding, ceil_mode=s.ceil_mode)
    rows = {
        "max_pool2d": (lambda x: F.max_pool2d(x, **pool_args), []),
        "avg_pool2d": (lambda x: F.avg_pool2d(x, **pool_args, count_include_pad=s.count_include_pad), []),
        "naive P-pool (autograd)": (naive_p_pool(alpha, s), [alpha]),
        "p_pool2d reference": (lambda x: p_pool2d(x, alpha, **pool_args, backend="reference"), [alpha]),
        "p_pool2d (ours, default)": (lambda x: p_pool2d(x, alpha, **pool_args), [alpha]),
    }
    # the layers as a network has them: after a ReLU (swap_pooling sets input_nonnegative), alpha at its init
    for mode, label in (
        ("layer", "P-pool layer alpha"),
        ("channel", "P-pool channel alpha"),
        ("dense", "P-pool dense alpha (fused)"),
        ("dense-unfused", "P-pool dense alpha (unfused)"),
    ):
        layer = PPool2d(
            s.kernel,
            s.stride,
            s.padding,
            s.ceil_mode,
            channels=s.size[1],
            alpha_mode=mode.split("-")[0],
            fused_branch=mode != "dense-unfused",
        ).to(device)
        layer.input_nonnegative = True
        rows[label] = (layer, list(layer.parameters()))
    if baselines:
        for name in POOLING_NAMES:
            if name in ("max", "avg", "ppool"):
                continue  # measured above
            layer = build_pooling(name, s.kernel, s.stride, s.padding, s.ceil_mode, channels=s.size[1]).to(device)
            rows[f"{name} (layer)"] = (layer, list(layer.parameters()))
    return rows


def saved_bytes(row: Row, x: torch.Tensor, params: list[torch.Tensor]) -> int:
    """Bytes autograd keeps for backward, less the input, the output and the row's own parameters (a saved view of a
    parameter adds nothing: the network keeps the parameter anyway)."""
    saved = {}

    def pack(t):
        saved[(t.data_ptr(), t.dtype)] = t.untyped_storage().nbytes() if t.data_ptr() else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = row(x)
    free = {(x.data_ptr(), x.dtype), (y.data_ptr(), y.dtype), *((p.data_ptr(), p.dtype) for p in params)}
    return sum(nbytes for key, nbytes in saved.items() if key not in free)


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def measure(rows: dict, x: torch.Tensor, reps: int) -> dict[str, dict[str, float]]:
    grads = {}
    times = {name: {"fwd": [], "fwdbwd": []} for name in rows}
    for name, (row, params) in rows.items():  # warm-up (kernel builds, autotuning), and each row's upstream gradient
        y = row(x)
        grads[name] = torch.rand_like(y)
        torch.autograd.backward(y, grads[name], inputs=[x, *params])
    for _ in range(reps):
        for name, (row, params) in rows.items():
            x.grad = None
            for p in params:
                p.grad = None
            t0 = clock(x.device)
            with torch.no_grad():
                row(x)
            t1 = clock(x.device)
            y = row(x)
            torch.autograd.backward(y, grads[name], inputs=[x, *params])
            t2 = clock(x.device)
            times[name]["fwd"].append((t1 - t0) * 1e3)
            times[name]["fwdbwd"].append((t2 - t1) * 1e3)
    result = {}
    for name, (row, params) in rows.items():
        result[name] = {
            "fwd": statistics.median(times[name]["fwd"]),
            "fwdbwd": statistics.median(times[name]["fwdbwd"]),
            "extra_mem": saved_bytes(row, x, params) / (x.numel() * x.element_size()),
            "out_numel": grads[name].numel(),
        }
    return result


def copy_bandwidth(x: torch.Tensor, reps: int) -> float:
    """Device-to-device copy bandwidth in GB/s (read + write) on a tensor of x's size."""
    src, dst = x.detach().clone(), torch.empty_like(x)
    dst.copy_(src)
    times = []
    for _ in range(max(reps, 5)):
        t0 = clock(x.device)
        dst.copy_(src)
        times.append(clock(x.device) - t0)
    return 2 * x.numel() * x.element_size() / statistics.median(times) / 1e9


def format_table(shape: Shape, result: dict, x: torch.Tensor, copy_gbps: float | None) -> str:
    base = result["max_pool2d"]
    gpu = copy_gbps is not None
    lines = [
        f"### {shape.name}: input {tuple(shape.size)}, kernel {shape.kernel}, stride {shape.stride}, "
        f"padding {shape.padding}" + (f"; copy bandwidth {copy_gbps:.0f} GB/s" if gpu else ""),
        "",
        "| row | fwd ms | fwd+bwd ms | fwd / max | fwd+bwd / max | extra memory / input |"
        + (" fwd+bwd GB/s | % copy |" if gpu else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if gpu else ""),
    ]
    for name, r in result.items():
        line = (
            f"| {name} | {r['fwd']:.3f} | {r['fwdbwd']:.3f} | {r['fwd'] / base['fwd']:.2f}x | "
            f"{r['fwdbwd'] / base['fwdbwd']:.2f}x | {r['extra_mem']:.2f} |"
        )
        if gpu:  # the floor: fwd reads x, writes y; bwd reads x and dy, writes dx
            floor = (3 * x.numel() + 2 * r["out_numel"]) * x.element_size()
            gbps = floor / (r["fwdbwd"] * 1e-3) / 1e9
            line += f" {gbps:.0f} | {100 * gbps / copy_gbps:.0f}% |"
        lines.append(line)
    return "\n".join(lines)


def train_step_table(
    device: torch.device,
    reps: int,
    batch: int = 8,
    crop: int = 321,
    layouts: tuple[str, ...] = ("largefov", "vgg16_20m"),
) -> str:
    """One SGD step (forward, loss, backward, update) of VGG16 in each layout of configs/voc, with max pooling and
    with P-pooling (the authors' dense alpha, fused), interleaved, median of ``reps``."""
    from polypool.models import SegmentationModel

    torch.manual_seed(0)
    images = torch.randn(batch, 3, crop, crop, device=device)
    masks = torch.randint(0, 21, (batch, crop, crop), device=device)
    models = {
        (layout, name): SegmentationModel(backbone="vgg16", pooling=name, head=layout).to(device)
        for layout in layouts
        for name in ("max", "ppool")
    }
    optimizers = {key: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for key, m in models.items()}

    def step(key):
        model, optimizer = models[key], optimizers[key]
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(images), masks).backward()
        optimizer.step()

    times = {key: [] for key in models}
    for key in models:
        step(key)  # warm-up
    for _ in range(reps):
        for key in models:
            t0 = clock(device)
            step(key)
            times[key].append((clock(device) - t0) * 1e3)
    lines = [
        f"### VGG16 training step: batch {batch}, {crop}x{crop}, SGD, median of {reps}",
        "",
        "| layout | pooling | step ms | / max |",
        "|---|---|---:|---:|",
    ]
    for layout in layouts:
        max_ms, ppool_ms = statistics.median(times[(layout, "max")]), statistics.median(times[(layout, "ppool")])
        lines += [
            f"| {layout} | max | {max_ms:.1f} | 1.00x |",
            f"| {layout} | P-pooling (dense alpha, fused default) | {ppool_ms:.1f} | {ppool_ms / max_ms:.2f}x |",
        ]
    return "\n".join(lines)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="two small shapes, 2 repetitions, no training step")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per row (the median is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument(
        "--shapes",
        nargs="*",
        default=None,
        help="only the shapes whose name contains one of these strings (e.g. vgg16@224 inception)",
    )
    parser.add_argument(
        "--rows",
        choices=["core", "all", "ppool"],
        default="all",
        help="core: without the baseline layers; ppool: max/avg_pool2d and the P-pooling layers only "
        "(without the slow naive and reference rows)",
    )
    parser.add_argument("--no-train-step", action="store_true", help="skip the VGG16-LargeFOV training step")
    parser.add_argument("--train-step-reps", type=int, default=3)
    parser.add_argument("--train-step-batch", type=int, default=8)
    parser.add_argument("--train-step-crop", type=int, default=321)
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = [s for s in shapes if any(part in s.name for part in args.shapes)]
    reps = 2 if args.quick else args.reps
    torch.manual_seed(0)
    header = (
        f"# Pooling benchmark: {device_description(device)}, torch {torch.__version__}, {args.dtype}, "
        f"median of {reps}\n\nCommand: `python benchmarks/bench_pooling.py "
        f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n"
    )
    print(header, flush=True)
    tables = [header]
    for shape in shapes:
        x = torch.rand(shape.size, device=device, dtype=dtype).requires_grad_(True)
        rows = make_rows(shape, device, baselines=args.rows == "all")
        if args.rows == "ppool":
            rows = {
                name: row for name, row in rows.items() if name not in ("naive P-pool (autograd)", "p_pool2d reference")
            }
        copy_gbps = copy_bandwidth(x, reps) if device.type == "cuda" else None
        table = format_table(shape, measure(rows, x, reps), x, copy_gbps)
        print(table + "\n", flush=True)
        tables.append(table + "\n")
        del x
    if not (args.quick or args.no_train_step):
        table = train_step_table(device, args.train_step_reps, args.train_step_batch, args.train_step_crop)
        print(table + "\n", flush=True)
        tables.append(table + "\n")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
