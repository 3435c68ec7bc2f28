"""The dispatch of ``p_pool2d`` to its backends, and the Triton path's safety nets (issue 16).

Without a GPU the Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set in conftest.py).
"""

import pytest
import torch

from polypool.pooling import p_pool2d, triton_fused

from fused_checks import runs_through

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("backend,function_name", [("triton", "PPool2dTriton"), ("reference", "_PPool2d"),
                                                   ("cpu_fused", "PPool2dCPU")])
def test_3d_input_keeps_the_backend(backend, function_name):
    """A (C, H, W) input runs on the backend asked for (it used to drop ``backend`` and take the default)."""
    if backend == "triton" and not triton_fused.enabled():
        pytest.skip("POLYPOOL_TRITON=0")
    device = DEVICE if backend == "triton" else "cpu"
    x = torch.rand(2, 6, 6, device=device, requires_grad=True)
    y = p_pool2d(x, 3.0, 2, backend=backend)
    assert y.shape == (2, 3, 3)
    assert runs_through(y, function_name)
    torch.testing.assert_close(y, p_pool2d(x[None], 3.0, 2, backend="reference")[0], rtol=1e-5, atol=1e-6)
