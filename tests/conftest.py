"""Test-session setup.

Without a GPU, Triton's kernels run in its CPU interpreter. ``triton.jit`` reads ``TRITON_INTERPRET`` when the
kernels' module is imported (lazily, on the first Triton call), so it is set here, before any test runs.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
