"""What the negative- and non-finite-input handling costs, side by side in one run (CPU, fp32, forward only).

    python benchmarks/bench_signed.py

Rows: the fused CPU kernel with and without ``input_nonnegative`` on a ReLU output (the price of the check), the
reference op likewise, and ``p_pool2d`` on a signed input (BatchNorm-like, N(0, 1)) against the same input after a
ReLU (the price of the per-window signed path, :mod:`polypool.pooling.signed`). Ratios, best of several runs.
"""

from __future__ import annotations

import time

import torch

from polypool.pooling import p_pool2d


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    torch.manual_seed(0)
    signed = torch.randn(8, 64, 112, 112)
    relu = signed.clamp(min=0)
    print(f"input {tuple(signed.shape)}, 2x2/2, alpha 3, torch threads {torch.get_num_threads()}")
    for backend in ("cpu_fused", "reference"):
        hinted = best_of(lambda: p_pool2d(relu, 3.0, 2, backend=backend, input_nonnegative=True), 10)
        checked = best_of(lambda: p_pool2d(relu, 3.0, 2, backend=backend), 10)
        print(
            f"{backend:10s} ReLU input: checked / hinted = {checked / hinted:.2f} "
            f"({checked * 1e3:.1f} / {hinted * 1e3:.1f} ms)"
        )
    nonnegative = best_of(lambda: p_pool2d(relu, 3.0, 2), 5)
    with_negatives = best_of(lambda: p_pool2d(signed, 3.0, 2), 5)
    print(
        f"auto       signed input / ReLU input = {with_negatives / nonnegative:.1f} "
        f"({with_negatives * 1e3:.1f} / {nonnegative * 1e3:.1f} ms)"
    )


if __name__ == "__main__":
    main()
