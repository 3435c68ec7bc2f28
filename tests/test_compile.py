"""torch.compile calls the fused kernels (issue 16, item 9): they are ``torch.library`` ops (``polypool::p_pool2d_cpu_v2``,
``polypool::p_pool2d_triton_v2`` via ``triton_op``/``wrap_triton``) with fake kernels and autograd formulas, so the
compiled graph holds them instead of the reference op's traced torch ops. torch.export keeps the reference's ops."""

import pytest
import torch

from polypool.pooling import cpu_fused, p_pool2d, triton_fused
from polypool.pooling.custom_ops import OP_NAMES
from polypool.pooling.geometry import Window

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def qualified(op: str) -> str:
    """The op as a graph names its call target: polypool::p_pool2d_cpu_v2 -> polypool.p_pool2d_cpu_v2"""
    return OP_NAMES[op].replace("::", ".")


def compiled_graph_ops(fn, *args):
    """Compile ``fn`` with a backend that records dynamo's graph; returns (the call targets, the compiled fn)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=record, fullgraph=True)
    compiled(*args)
    return [str(node.target) for gm in graphs for node in gm.graph.nodes if node.op == "call_function"], compiled


def check_against_reference(fn_compiled, x, alpha, window, nonnegative):
    y = fn_compiled(x, alpha)
    g = torch.rand_like(y)
    grads = torch.autograd.grad(y, (x, alpha), g)
    xr = torch.relu(x) if nonnegative else x
    y_ref = p_pool2d(xr, alpha, *window, backend="reference")
    grads_ref = torch.autograd.grad(y_ref, (x, alpha), g)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0], grads_ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads_ref[1], rtol=1e-4, atol=1e-4 * grads_ref[1].abs().max().item())


@pytest.mark.parametrize("backend,op", [("cpu_fused", "cpu"), ("triton", "triton")])
@pytest.mark.parametrize("alpha_kind", ["channel", "dense"])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_compiled_graph_calls_the_fused_op(backend, op, alpha_kind, nonnegative):
    if (backend == "cpu_fused" and not cpu_fused.enabled()) or (backend == "triton" and not triton_fused.enabled()):
        pytest.skip("backend turned off")
    device = DEVICE if backend == "triton" else "cpu"
    window = (3, 2, 1)
    torch.manual_seed(0)
    x = torch.randn(
        2, 3, 9, 10, device=device, requires_grad=True
    )  # negatives: their windows through the signed path in the graph
    out = Window.make(*window).output_size(9, 10)
    alpha = (
        torch.rand(3, 1, 1, device=device) * 20
        if alpha_kind == "channel"
        else torch.rand(2, 3, *out, device=device) * 20
    ).requires_grad_(True)

    def f(x, alpha):
        return p_pool2d(
            torch.relu(x) if nonnegative else x, alpha, *window, backend=backend, input_nonnegative=nonnegative
        )

    ops, compiled = compiled_graph_ops(f, x, alpha)
    assert f"{qualified(op)}.default" in ops, ops
    check_against_reference(compiled, x, alpha, window, nonnegative)


def test_compiled_aot_eager_backward_uses_the_backward_op():
    """Through AOTAutograd (what Inductor gets): the forward and the backward graphs each hold the fused op."""
    if not cpu_fused.enabled():
        pytest.skip("POLYPOOL_CPU_KERNEL=0")
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    graphs = []

    def record(gm, example_inputs):
        def compiler(graph, inputs):
            graphs.append(graph)
            return make_boxed_func(graph.forward)

        return aot_module_simplified(gm, example_inputs, fw_compiler=compiler, bw_compiler=compiler)

    torch._dynamo.reset()
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    alpha = torch.rand(3, 1, 1, requires_grad=True)
    compiled = torch.compile(lambda x, a: p_pool2d(x, a, 2), backend=record, fullgraph=True)
    compiled(x, alpha).sum().backward()
    targets = [[str(n.target) for n in g.graph.nodes if n.op == "call_function"] for g in graphs]
    assert any(f"{qualified('cpu')}.default" in t for t in targets[0])
    assert any(f"{qualified('cpu_backward')}.default" in t for t in targets[1])


def test_export_keeps_the_reference_ops():
    """torch.export does not record the polypool ops: its program is plain aten ops (ONNX, AOTInductor)."""
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    from polypool.surgery import swap_pooling

    swap_pooling(model, "ppool", input_size=(3, 8, 8))
    program = torch.export.export(model.eval(), (torch.rand(1, 3, 8, 8),))
    assert not any("polypool" in str(node.target) for node in program.graph.nodes)


@pytest.mark.slow
def test_inductor_on_cpu_calls_the_cpu_op():
    """The default backend (Inductor, C++ code generation on the CPU) runs the op and its backward."""
    if not cpu_fused.enabled():
        pytest.skip("POLYPOOL_CPU_KERNEL=0")
    torch._dynamo.reset()
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    alpha = (torch.rand(3, 1, 1) * 20).requires_grad_(True)

    def f(x, alpha):
        return p_pool2d(torch.relu(x), alpha, 3, 2, 1, input_nonnegative=True)

    check_against_reference(torch.compile(f), x, alpha, (3, 2, 1), True)
