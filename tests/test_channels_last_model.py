"""Channels-last is a layout, not a precision: the layers with a channels-last fast path (the decoder's layer norm,
the spectral attention) and the whole network give the NCHW results on channels-last tensors."""

from __future__ import annotations

import copy

import pytest
import torch

from sschsr_deploy.model.attention import ChannelLayerNorm


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("shape", [(1, 64, 17, 23), (2, 31, 8, 5), (3, 2, 1, 9)])
def test_layer_norm_channels_last_path_equals_nchw(shape):
    torch.manual_seed(0)
    norm = ChannelLayerNorm(shape[1])
    with torch.no_grad():
        norm.body.weight.uniform_(0.5, 1.5)
        norm.body.bias.uniform_(-0.3, 0.3)
    x = torch.randn(shape) * 3 + 1.5  # an offset mean: the centring matters
    want = norm(x)
    got = norm(x.contiguous(memory_format=torch.channels_last))
    assert _rel(got, want) < 1e-6
    if shape[2] * shape[3] > 1:
        assert got.is_contiguous(memory_format=torch.channels_last)  # the layout carries on
    sliced = torch.cat([x, x], dim=1).contiguous(memory_format=torch.channels_last)[:, :shape[1]]
    assert _rel(norm(sliced), want) < 1e-6  # a channel slice (not channels-last contiguous): the NCHW formula


def test_tiny_network_channels_last_equals_nchw():
    from sschsr_deploy.engine.onnx import example_inputs
    from sschsr_deploy.weights import load_model

    model, _ = load_model("tiny-x4")
    inputs = example_inputs(31, 2, (128, 136), seed=3)
    with torch.inference_mode():
        want = model(*inputs)
        cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        got = cl_model(*(t.contiguous(memory_format=torch.channels_last) for t in inputs))
    assert _rel(got, want) < 1e-5
