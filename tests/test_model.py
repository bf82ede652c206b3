"""Structure of the network (keys, shapes, parameter counts), presets, the batch-norm switch and input validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.golden import official_manifest
from sschsr_deploy.model import SSCHSR

MANIFEST = json.loads(
    (Path(__file__).parents[1] / "sschsr_deploy" / "resources" / "official_state_dict_manifest.json").read_text()
)


@pytest.fixture(scope="module")
def official():
    return SSCHSR.from_preset("official")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SSCHSR.from_preset("tiny").eval()


def test_state_dict_keys_and_shapes_equal_manifest(official):
    sd = official.state_dict()
    entries = official_manifest()
    assert list(sd) == [e["key"] for e in entries]  # same keys, alias keys included, same order
    for e in entries:
        assert list(sd[e["key"]].shape) == e["shape"], e["key"]
        assert str(sd[e["key"]].dtype) == "torch." + e["dtype"], e["key"]


def test_alias_keys_are_one_tensor(official):
    sd = official.state_dict()
    aliases = [e for e in official_manifest() if "alias_of" in e]
    assert len(aliases) == 10
    for e in aliases:
        assert sd[e["key"]].data_ptr() == sd[e["alias_of"]].data_ptr()


def test_parameter_counts_equal_manifest(official):
    assert official.num_parameters() == MANIFEST["header"]["total_parameter_count"] == 27_450_743
    for name, count in MANIFEST["parameter_counts_per_top_level_submodule"].items():
        assert sum(p.numel() for p in getattr(official, name).parameters()) == count, name
    for path, info in MANIFEST["parameter_counts_second_level"].items():
        module = official.get_submodule(path)
        assert sum(p.numel() for p in module.parameters()) == info["parameters"], path
        assert sum(b.numel() for b in module.buffers()) == info["buffer_elements"], path
    trainable = sum(p.numel() for p in official.parameters() if p.requires_grad)
    assert trainable == MANIFEST["header"]["trainable_parameter_count_default_config"]


def test_tiny_preset_is_small_and_same_graph(tiny, official):
    assert tiny.num_parameters() <= 1_500_000
    # Same graph: the tiny key set equals the official one except for the blocks it drops.
    tiny_keys = set(tiny.state_dict())
    assert tiny_keys <= set(official.state_dict())
    assert {k.split(".")[0] for k in tiny_keys} == {k.split(".")[0] for k in official.state_dict()}


def _inputs(b=1, h=128, w=136, bands=31, seed=0):
    g = torch.Generator().manual_seed(seed)
    hsi = torch.rand(b, bands, h, w, generator=g)
    rgb = torch.rand(b, 3, h, w, generator=g)
    ref = torch.rand(b, 3, h, w, generator=g)
    return [hsi, rgb, ref, rgb * 255, ref * 255]


def test_tiny_forward_shapes_and_outputs(tiny):
    with torch.no_grad():
        res = tiny(*_inputs(b=2), return_all=True)
    assert res["out"].shape == (2, 31, 128, 136)
    assert res["flow"].shape == (2, 2, 128, 136)
    assert res["ref_warp"].shape == res["ref_warpnet"].shape == (2, 3, 128, 136)
    assert torch.isfinite(res["out"]).all()


def test_batch_elements_are_independent_in_running_mode(tiny):
    x = _inputs(b=2, seed=1)
    with torch.no_grad():
        both = tiny(*x)
        first = tiny(*[t[:1] for t in x])
    assert torch.allclose(both[:1], first, atol=1e-4, rtol=1e-4)


def test_band_count_is_a_parameter():
    torch.manual_seed(0)
    m = SSCHSR.from_preset("tiny", bands=48).eval()
    with torch.no_grad():
        out = m(*_inputs(bands=48))
    assert out.shape[1] == 48
    with pytest.raises(InputValidationError, match="31 bands, the model expects 48"):
        m(*_inputs(bands=31))


def test_batchnorm_switch(tiny):
    x = _inputs(seed=2)
    cnet_bn = tiny.flownet.cnet.norm1
    before = cnet_bn.running_mean.clone()
    with torch.no_grad():
        tiny.batchnorm_mode = "batch"
        batch_out = tiny(*x)
        tiny.batchnorm_mode = "running"
        running_out = tiny(*x)
    assert torch.equal(cnet_bn.running_mean, before)  # the switch never updates running statistics
    assert not torch.allclose(batch_out, running_out)
    with pytest.raises(ValueError, match="batchnorm_mode"):
        tiny.batchnorm_mode = "train"


def test_eval_alone_uses_running_statistics():
    m = SSCHSR.from_preset("tiny")
    assert m.batchnorm_mode == "running"
    m.eval()
    bn = m.flownet.cnet.norm1
    bn.running_mean.fill_(3.0)
    x = torch.randn(1, bn.num_features, 4, 4)
    expected = (x - 3.0) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    assert torch.allclose(bn(x), expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1), atol=1e-6)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x: x.__setitem__(0, x[0][:, :30]), "hsi_sr has 30 bands, the model expects 31"),
        (lambda x: x.__setitem__(2, x[2][:, :2]), "ref_hr has 2 channels, the model expects 3"),
        (lambda x: x.__setitem__(2, x[2][..., :128]), "ref_hr is .* but hsi_sr is .*same batch size and HR height"),
        (lambda x: x.__setitem__(1, x[1][:1].expand(1, 3, 128, 136)) or x.__setitem__(0, x[0].repeat(2, 1, 1, 1)),
         "same batch size"),
        (lambda x: x.__setitem__(3, x[3][0]), "hsi_rgb_sr_flow must be a B×C×H×W tensor"),
        (lambda x: x[0].__setitem__((0, 0, 5, 5), float("nan")), "hsi_sr contains NaN or infinite"),
        (lambda x: x[4].__setitem__((0, 1, 7, 9), float("inf")), "ref_hr_flow contains NaN or infinite"),
    ],
)
def test_bad_inputs_are_refused(tiny, mutate, message):
    x = _inputs()
    mutate(x)
    with pytest.raises(InputValidationError, match=message):
        tiny(*x)


@pytest.mark.parametrize(("h", "w"), [(120, 128), (128, 120), (64, 64)])
def test_too_small_is_refused(tiny, h, w):
    with pytest.raises(InputValidationError, match=r"at least 128×128.*NaN flow"):
        tiny(*_inputs(h=h, w=w))


@pytest.mark.parametrize(("h", "w"), [(128, 132), (130, 128)])
def test_not_multiple_of_8_is_refused(tiny, h, w):
    with pytest.raises(InputValidationError, match="multiples of 8"):
        tiny(*_inputs(h=h, w=w))


def test_wrong_number_of_inputs(tiny):
    with pytest.raises(InputValidationError, match="takes 5 inputs"):
        tiny.check_inputs(*_inputs()[:4])


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*official"):
        SSCHSR.from_preset("huge")
