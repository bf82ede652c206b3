"""``torch.compile`` sees the whole forward as one graph, float32 islands included (sschsr_deploy.precision): a graph
break splits Inductor's fusion and freezing at every island (there were 81 in the official preset before the islands
stopped setting a ContextVar under tracing). Dynamo only traces here (``explain``), nothing is compiled."""

from __future__ import annotations

import pytest
import torch

from sschsr_deploy.model import SSCHSR


@pytest.fixture(scope="module")
def tiny_and_inputs():
    torch.manual_seed(0)
    model = SSCHSR.from_preset("tiny").eval()
    model.validate_inputs = False
    g = torch.Generator().manual_seed(1)
    size = 128
    inputs = (torch.rand(1, model.config.bands, size, size, generator=g),
              *(torch.rand(1, 3, size, size, generator=g) for _ in range(4)))
    return model, inputs


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_forward_is_one_graph(tiny_and_inputs, autocast):
    model, inputs = tiny_and_inputs
    torch._dynamo.reset()
    with torch.inference_mode(), torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        explained = torch._dynamo.explain(model)(*inputs)
    reasons = sorted({str(b.reason).splitlines()[0] for b in explained.break_reasons})
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


def test_islands_still_switch_precision_in_eager(tiny_and_inputs):
    """The traced path did not change eager autocast: a float32 island inside bf16 autocast still computes in
    float32 and its reduced region in bf16 (the nested marks read the enclosing island's dtype)."""
    from sschsr_deploy.precision import float32_island, reduced_precision_module

    seen = []

    @reduced_precision_module
    class Inner(torch.nn.Module):
        def forward(self, x):
            y = torch.nn.functional.linear(x, torch.ones(4, 4))
            seen.append(("inner", y.dtype))
            return y

    inner = Inner()

    @float32_island
    def island(x):
        seen.append(("island", torch.nn.functional.linear(x, torch.ones(4, 4)).dtype))
        return inner(x)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = island(torch.rand(2, 4))
    assert seen == [("island", torch.float32), ("inner", torch.bfloat16)] and out.dtype == torch.float32


class _ConvNet(torch.nn.Module):
    """A stand-in with the backend's five inputs: conv → GELU → depthwise conv, plus the first input."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.config = SimpleNamespace(bands=8, scale=4)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, hsi, *others):
        return self.depthwise(torch.nn.functional.gelu(self.conv(hsi))) + hsi + others[0].mean() * 0


def test_compiled_backend_freezes_and_prepacks_the_convolutions():
    """``TorchBackend(compile=True)`` compiles with Inductor's freezing: the convolutions run pre-packed with their
    epilogue fused (``mkldnn::_convolution_pointwise``), not as ``aten::mkldnn_convolution`` — which is what
    ``torch.compile(options={"freezing": True})`` silently gave. Same output as eager."""
    from torch.profiler import profile

    from sschsr_deploy.runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    net = _ConvNet().eval()
    g = torch.Generator().manual_seed(2)
    inputs = (torch.rand(1, 8, 24, 24, generator=g), *(torch.rand(1, 3, 24, 24, generator=g) for _ in range(4)))
    expected = TorchBackend(net).run(*inputs)
    backend = TorchBackend(net, compile=True)
    torch._dynamo.reset()
    backend.run(*inputs)
    with profile() as prof:
        out = backend.run(*inputs)
    ops = {e.key for e in prof.key_averages()}
    assert "mkldnn::_convolution_pointwise" in ops and "aten::mkldnn_convolution" not in ops, sorted(ops)
    assert float((out - expected).norm() / expected.norm()) < 1e-5


def test_convex_upsample_is_reduction_free_and_equals_the_weighted_sum():
    """RAFT's ×8 convex upsampling sums its 9 taps by explicit adds: written as a ``sum`` over the tap dimension,
    Inductor fused it with the flow's computation and parallelised the 9-element reduction inside a serial loop over
    every output value (187 ms of a 2.2 s compiled bf16 forward at 256²). Same values as the weighted sum."""
    import torch.nn.functional as F
    from torch.fx.experimental.proxy_tensor import make_fx

    from sschsr_deploy.model.raft import convex_upsample

    g = torch.Generator().manual_seed(3)
    b, h, w = 2, 5, 7
    flow = torch.randn(b, 2, h, w, generator=g) * 4
    logits = torch.randn(b, 576, h, w, generator=g)
    mask = torch.softmax(logits.view(b, 1, 9, 8, 8, h, w), dim=2)
    nbrs = F.unfold(8 * flow, (3, 3), padding=1).view(b, 2, 9, 1, 1, h, w)
    ref = (mask * nbrs).sum(dim=2).permute(0, 1, 4, 2, 5, 3).reshape(b, 2, 8 * h, 8 * w)
    out = convex_upsample(flow, logits)
    assert out.shape == (b, 2, 8 * h, 8 * w)
    assert float((out - ref).norm() / ref.norm()) < 1e-6
    graph = make_fx(convex_upsample)(flow, logits).graph
    ops = {str(n.target) for n in graph.nodes if n.op == "call_function"}
    assert not {op for op in ops if op.startswith(("aten.sum", "aten.mean"))}, ops
    assert any(op.startswith("aten._softmax") for op in ops)  # the graph really was traced
