"""P-pooled models export (issue 16, item 11): ``torch.export`` and ``torch.onnx.export(dynamo=True)``.

Traced, ``p_pool2d`` is the reference op's plain torch ops (the fused kernels are not traced), so an exported program
runs wherever its ops do. The exported program's output must equal eager's: torch.export's module in torch, the ONNX
file in onnxruntime.
"""

import pytest
import torch
from torch import nn

from polypool.pooling import PPool2d


def small_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        PPool2d(2, channels=8, alpha_mode="dense"),
        nn.Conv2d(8, 8, 3, padding=1),
        PPool2d(3, 2, 1, ceil_mode=True, channels=8, alpha_mode="channel"),
    ).eval()


def test_export_of_conv_relu_dense_ppool_runs_and_matches_eager():
    """It exported before, but the program failed when run: "maximum(): functions with out=... arguments don't
    support automatic differentiation" (the traced window max used out=)."""
    torch.manual_seed(0)
    model = small_model()
    x = torch.rand(2, 3, 16, 17)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x), rtol=1e-5, atol=1e-6)
    x2 = torch.randn(2, 3, 16, 17)  # other values, negatives included (the signed path is traced, not branched on)
    torch.testing.assert_close(program.module()(x2), model(x2), rtol=1e-5, atol=1e-6)


def segmentation_network(backbone: str, alpha_mode: str, size: int) -> nn.Module:
    """A whole segmentation network (backbone with every pooling swapped for P-pooling, head, upsampling), as a
    trained model would be deployed."""
    from polypool.models import SegmentationModel

    torch.manual_seed(0)
    options = {"vgg16": {"head": "largefov"}, "inception_v3": {"output_stride": 32}}[backbone]
    model = SegmentationModel(backbone=backbone, pooling="ppool", pooling_kwargs={"alpha_mode": alpha_mode}, **options)
    expected_sites = {"vgg16": 6, "inception_v3": 13}[backbone]  # every pooling site (LargeFOV: pool5a too)
    assert len(model.swap_report.swapped) == expected_sites
    return model.network.eval()


# VGG16-LargeFOV (3x3/2 pad 1 pools, dilated fc6) with dense alpha; inception_v3 (max and average sites) + ASPP
CASES = [("vgg16", "dense", 40), ("inception_v3", "channel", 75)]


@pytest.mark.slow
@pytest.mark.parametrize("backbone,alpha_mode,size", CASES)
def test_torch_export_of_p_pooled_backbones(monkeypatch, backbone, alpha_mode, size):
    model = segmentation_network(backbone, alpha_mode, size)
    x = torch.rand(1, 3, size, size)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        exported = program.module()(x)
        assert exported.shape == (1, 21, size, size)  # logits at the input resolution
        assert_matches_eager(monkeypatch, exported, model, x)


def assert_matches_eager(monkeypatch, exported, model, x, tolerance=1e-6):
    """Equal to eager with the reference op (the same arithmetic), and close to eager's default (the fused CPU
    kernel, whose rounding differs by ~1e-6 per pool: a random-init network amplifies it, so relative to the scale).
    ``tolerance``: of the scale, against the reference (onnxruntime's convolutions round differently)."""
    with torch.no_grad():
        default = model(x)
        monkeypatch.setenv("POLYPOOL_CPU_KERNEL", "0")
        reference = model(x)
    scale = reference.abs().max().item()
    torch.testing.assert_close(exported, reference, rtol=1e-5, atol=tolerance * scale)
    torch.testing.assert_close(exported, default, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.slow
@pytest.mark.parametrize("backbone,alpha_mode,size", CASES)
def test_onnx_export_of_p_pooled_backbones(monkeypatch, tmp_path, backbone, alpha_mode, size):
    import onnxruntime  # onnx, onnxscript and onnxruntime are in the test extras

    model = segmentation_network(backbone, alpha_mode, size)
    x = torch.rand(1, 3, size, size)
    path = tmp_path / f"{backbone}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert_matches_eager(monkeypatch, torch.from_numpy(out), model, x, tolerance=2e-5)
