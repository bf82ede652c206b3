"""Tests of sschsr_deploy.checkpoint: safe unpickling, official layouts, aliases, load reports and safetensors."""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import pathlib
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from sschsr_deploy import checkpoint as ckpt
from sschsr_deploy.errors import CheckpointError

MANIFEST = Path(ckpt.__file__).parents[1] / "resources" / "official_state_dict_manifest.json"
NORM3 = "flownet.cnet.layer2.0.norm3"
DOWN1 = "flownet.cnet.layer2.0.downsample.1"


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _manifest_entries() -> list[dict]:
    return json.loads(MANIFEST.read_text())["whole_model_state_dict"]


def manifest_state_dict(prefixes: tuple[str, ...] = ("",), seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the official keys/shapes/dtypes; alias entries share storage with their target."""
    gen = torch.Generator().manual_seed(seed)
    entries = [e for e in _manifest_entries() if e["key"].startswith(prefixes)]
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        if e.get("alias_of"):
            continue
        shape = tuple(e["shape"])
        if e["dtype"] == "int64":
            out[e["key"]] = torch.randint(0, 1000, shape, generator=gen, dtype=torch.int64)
        else:
            out[e["key"]] = torch.randn(shape, generator=gen)
    for e in entries:
        if e.get("alias_of"):
            out[e["key"]] = out[e["alias_of"]].detach()  # what Module.state_dict gives for a shared module
    return {e["key"]: out[e["key"]] for e in entries}


class _Node(nn.Module):
    pass


class StandIn(nn.Module):
    """A few official keys, including RAFT's cnet BatchNorm registered as both norm3 and downsample.1."""

    def __init__(self, shared: bool = True) -> None:
        super().__init__()
        self.flownet = _Node()
        self.flownet.fnet = _Node()
        self.flownet.fnet.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        block = _Node()
        block.conv1 = nn.Conv2d(64, 96, 3, stride=2, padding=1)
        block.norm3 = nn.BatchNorm2d(96)
        block.downsample = nn.Sequential(nn.Conv2d(64, 96, 1, stride=2), block.norm3 if shared else nn.BatchNorm2d(96))
        self.flownet.cnet = _Node()
        self.flownet.cnet.layer2 = nn.Sequential(block)
        self.warpnet = _Node()
        self.warpnet.block = _Node()
        self.warpnet.block.conv6 = nn.Conv2d(16, 3, 3, padding=1)
        extractor = _Node()
        extractor.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        extractor.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        extractor.model = nn.Sequential(collections.OrderedDict(conv1_1=nn.Conv2d(3, 64, 3, padding=1)))
        self.rgb_extractor = _Node()
        self.rgb_extractor.feature_extraction_image1 = extractor


def randomized(sd: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """Fresh random values for a state dict, aliases (shared storage) kept shared."""
    gen = torch.Generator().manual_seed(seed)
    by_storage: dict[tuple, torch.Tensor] = {}
    out = {}
    for k, v in sd.items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if ident not in by_storage:
            if v.dtype == torch.int64:
                by_storage[ident] = torch.randint(1, 100, v.shape, generator=gen)
            else:
                by_storage[ident] = torch.randn(v.shape, generator=gen)
        out[k] = by_storage[ident]
    return out


@contextlib.contextmanager
def fake_module(name: str, **attrs):
    """A module that exists only while saving, like torchlight on the authors' machine."""
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
        if isinstance(v, type):
            v.__module__ = name
    sys.modules[name] = mod
    try:
        yield mod
    finally:
        del sys.modules[name]


EngineConfig = collections.namedtuple("EngineConfig", ["max_epochs", "mnt"])


class Evil:
    """Pickles as a call that writes a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (self.marker, "pwned"))


def training_checkpoint(model_sd: dict, extra: dict | None = None) -> dict:
    """The torchlight engine layout: epoch / module{model, optimizer} / monitor / config."""
    param = nn.Parameter(torch.randn(4, 3))
    opt = torch.optim.Adam([param])
    param.sum().backward()
    opt.step()
    out = {
        "epoch": 12,
        "module": {"model": model_sd, "optimizer": opt.state_dict()},
        "monitor": {"best": 41.5, "not_improved_count": 0},
        "config": EngineConfig(100, "max psnr"),
        "args": argparse.Namespace(lr=1e-4, arch="FusionWarpNetHSI"),
    }
    out.update(extra or {})
    return out


def save_with_fake_torchlight(obj, path: Path, **kwargs) -> None:
    with fake_module("fake_torchlight_engine", EngineConfig=EngineConfig):
        torch.save(obj, path, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Consistency of the fixtures with the manifest
# ---------------------------------------------------------------------------------------------------------------------


def test_standin_keys_are_official_keys_with_official_shapes():
    shapes = {e["key"]: tuple(e["shape"]) for e in _manifest_entries()}
    sd = StandIn().state_dict()
    assert f"{DOWN1}.weight" in sd and f"{NORM3}.weight" in sd
    for key, value in sd.items():
        assert shapes[key] == tuple(value.shape), key


def test_alias_rule_reproduces_manifest_aliases():
    manifest_aliases = {e["key"]: e["alias_of"] for e in _manifest_entries() if e.get("alias_of")}
    assert len(manifest_aliases) == 10
    assert ckpt.official_aliases() == manifest_aliases
    for alias, canonical in manifest_aliases.items():
        assert ckpt.alias_partner(alias) == canonical
        assert ckpt.alias_partner(canonical) == alias
    assert ckpt.alias_partner("flownet.fnet.conv1.weight") is None
    assert len(ckpt.official_keys()) == 585


# ---------------------------------------------------------------------------------------------------------------------
# Safe unpickling
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_training_checkpoint_does_not_run_code(tmp_path, protocol, zip_format):
    marker = tmp_path / "pwned.txt"
    model_sd = StandIn().state_dict()
    path = tmp_path / "model-best.pth"
    save_with_fake_torchlight(
        training_checkpoint(model_sd, {"evil": Evil(marker)}),
        path,
        pickle_protocol=protocol,
        _use_new_zipfile_serialization=zip_format,
    )

    loaded = ckpt.read_checkpoint(path)
    assert not marker.exists()
    assert set(loaded) == set(model_sd)
    for k in model_sd:
        assert torch.equal(loaded[k], model_sd[k])
    raw = ckpt.safe_torch_load(path)
    assert isinstance(raw["evil"], ckpt.UnknownObject)
    assert not marker.exists()

    # The same file with the stock unpickler does run the payload, so the assertions above can fail.
    with fake_module("fake_torchlight_engine", EngineConfig=EngineConfig):
        torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_unknown_framework_objects_become_placeholders(tmp_path):
    model_sd = StandIn().state_dict()
    path = tmp_path / "ckpt.pth"
    save_with_fake_torchlight(training_checkpoint(model_sd), path)
    assert "fake_torchlight_engine" not in sys.modules  # the class is gone at load time

    raw = ckpt.safe_torch_load(path)
    assert raw["epoch"] == 12
    config = raw["config"]
    assert isinstance(config, ckpt.UnknownObject)
    assert config._sschsr_global == "fake_torchlight_engine.EngineConfig"
    assert config._sschsr_args == (100, "max psnr")
    assert isinstance(raw["args"], ckpt.UnknownObject)
    assert raw["args"]._sschsr_state == {"lr": 1e-4, "arch": "FusionWarpNetHSI"}
    assert isinstance(raw["module"]["optimizer"]["state"][0]["exp_avg"], torch.Tensor)
    assert set(ckpt.read_checkpoint(path)) == set(model_sd)


def test_parameters_and_dtypes_survive_restricted_unpickling(tmp_path):
    obj = {
        "p": nn.Parameter(torch.randn(3)),
        "h": torch.randn(2, 2).half(),
        "i": torch.tensor(7),
        "view": torch.arange(10.0)[2:8:2],
        "dtype": torch.bfloat16,
        "size": torch.Size([1, 2]),
        "device": torch.device("cpu"),
        "bytes": b"\x00\xff",
        "set": {1, 2},
    }
    path = tmp_path / "misc.pt"
    torch.save(obj, path)
    raw = ckpt.safe_torch_load(path)
    assert isinstance(raw["p"], nn.Parameter)
    assert raw["h"].dtype == torch.float16 and torch.equal(raw["h"], obj["h"])
    assert torch.equal(raw["view"], torch.tensor([2.0, 4.0, 6.0]))
    assert raw["dtype"] is torch.bfloat16 and raw["size"] == torch.Size([1, 2])
    assert raw["device"] == torch.device("cpu") and raw["bytes"] == b"\x00\xff" and raw["set"] == {1, 2}


def test_forced_weights_only_mode_uses_placeholders(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    model_sd = StandIn().state_dict()
    clean = tmp_path / "clean.pth"
    save_with_fake_torchlight(training_checkpoint(model_sd), clean)
    assert set(ckpt.read_checkpoint(clean)) == set(model_sd)
    assert isinstance(ckpt.safe_torch_load(clean)["config"], ckpt.UnknownObject)

    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pth"
    save_with_fake_torchlight(training_checkpoint(model_sd, {"evil": Evil(marker)}), evil)
    with contextlib.suppress(CheckpointError):  # torch's weights-only loader may refuse the gadget outright
        ckpt.read_checkpoint(evil)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------------
# Official layouts
# ---------------------------------------------------------------------------------------------------------------------


def test_full_training_checkpoint_maps_to_all_official_keys(tmp_path):
    full = manifest_state_dict()
    path = tmp_path / "model-best.pth"
    save_with_fake_torchlight(training_checkpoint(full), path)
    sd = ckpt.load_official_checkpoint(path)
    assert set(sd) == set(full) and len(sd) == 585
    assert all(torch.equal(sd[k], full[k]) for k in full)
    assert sd["flownet.cnet.norm1.num_batches_tracked"].dtype == torch.int64


def test_raft_things_layout(tmp_path):
    flownet = manifest_state_dict(("flownet.",))
    raft = {"module." + k[len("flownet.") :]: v for k, v in flownet.items()}
    assert "module.fnet.conv1.weight" in raft and "module.cnet.layer2.0.downsample.1.weight" in raft
    path = tmp_path / "raft-things.pth"
    torch.save(raft, path)
    for kind in ("auto", "raft"):
        sd = ckpt.load_official_checkpoint(path, kind=kind)
        assert set(sd) == set(flownet)
        assert torch.equal(sd["flownet.update_block.mask.2.weight"], flownet["flownet.update_block.mask.2.weight"])


def test_warpnet_layout_drops_flownet(tmp_path):
    warp = manifest_state_dict(("warpnet.",), seed=3)
    other_flow = manifest_state_dict(("flownet.",), seed=4)
    path = tmp_path / "warpnet-sf8.pth"
    save_with_fake_torchlight(training_checkpoint({**other_flow, **warp}), path)
    sd = ckpt.load_official_checkpoint(path)
    assert set(sd) == set(warp)
    assert torch.equal(sd["warpnet.block.conv6.weight"], warp["warpnet.block.conv6.weight"])
    # A bare UNet state dict (keys "block.*") is recognised too.
    bare = tmp_path / "unet.pth"
    torch.save({k[len("warpnet.") :]: v for k, v in warp.items()}, bare)
    assert set(ckpt.load_official_checkpoint(bare)) == set(warp)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_feature_extraction_layout(tmp_path, prefix):
    ext = manifest_state_dict(("rgb_extractor.",), seed=5)
    file_sd = {prefix + k[len("rgb_extractor.") :]: v for k, v in ext.items()}
    assert prefix + "feature_extraction_image2.model.conv3_1.weight" in file_sd
    path = tmp_path / "feature_extraction.pth"
    torch.save(file_sd, path)
    sd = ckpt.load_official_checkpoint(path)
    assert set(sd) == set(ext)
    assert torch.equal(
        sd["rgb_extractor.feature_extraction_image1.mean"], ext["rgb_extractor.feature_extraction_image1.mean"]
    )


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict_with_optional_dataparallel_prefix(tmp_path, prefix):
    sd = StandIn().state_dict()
    path = tmp_path / "bare.pth"
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    assert set(ckpt.load_official_checkpoint(path)) == set(sd)


def test_unknown_layout_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout") as info:
        ckpt.load_official_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="kind"):
        ckpt.map_state_dict({"a": torch.zeros(1)}, kind="bogus")


# ---------------------------------------------------------------------------------------------------------------------
# load_into: aliases and reports
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["shared-module", "separate-modules"])
@pytest.mark.parametrize("given", ["norm3", "downsample.1"])
def test_alias_either_name_fills_both(shared, given):
    source = randomized(StandIn().state_dict())
    drop = DOWN1 if given == "norm3" else NORM3
    sd = {k: v for k, v in source.items() if not k.startswith(drop + ".")}
    model = StandIn(shared=shared)
    report = ckpt.load_into(model, sd, strict=True)
    assert report.ok and not report.missing and not report.unexpected
    assert sorted(report.filled_from_alias) == sorted(k for k in source if k.startswith(drop + "."))
    state = model.state_dict()
    for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        expected = source[f"{NORM3}.{field}"]
        assert torch.equal(state[f"{NORM3}.{field}"], expected)
        assert torch.equal(state[f"{DOWN1}.{field}"], expected)


def test_conflicting_alias_values_raise():
    sd = {k: v.clone() for k, v in randomized(StandIn().state_dict()).items()}
    sd[f"{DOWN1}.weight"] = sd[f"{NORM3}.weight"] + 1
    model = StandIn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for strict in (True, False):
        with pytest.raises(CheckpointError, match="conflicting") as info:
            ckpt.load_into(model, sd, strict=strict)
        assert f"{DOWN1}.weight" in str(info.value) and f"{NORM3}.weight" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_equal_alias_copies_are_accepted():
    sd = {k: v.clone() for k, v in randomized(StandIn().state_dict()).items()}  # separate but equal tensors
    assert ckpt.load_into(StandIn(), sd).ok


def test_problems_reported_with_strict_false_and_raised_with_strict_true():
    source = randomized(StandIn().state_dict())
    sd = dict(source)
    del sd["warpnet.block.conv6.bias"]
    sd["decoder.extra.weight"] = torch.zeros(3)
    sd["flownet.fnet.conv1.weight"] = torch.zeros(64, 3, 5, 5)

    model = StandIn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        ckpt.load_into(model, sd, strict=True)
    message = str(info.value)
    for key in ("warpnet.block.conv6.bias", "decoder.extra.weight", "flownet.fnet.conv1.weight"):
        assert key in message
    assert "1 missing" in message and "1 unexpected" in message and "1 shape-mismatched" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing copied

    report = ckpt.load_into(model, sd, strict=False)
    assert not report.ok
    assert report.missing == ["warpnet.block.conv6.bias"]
    assert report.unexpected == ["decoder.extra.weight"]
    assert report.mismatched == [("flownet.fnet.conv1.weight", (64, 3, 7, 7), (64, 3, 5, 5))]
    state = model.state_dict()
    assert torch.equal(state["warpnet.block.conv6.weight"], source["warpnet.block.conv6.weight"])
    assert torch.equal(state["flownet.fnet.conv1.weight"], before["flownet.fnet.conv1.weight"])
    text = str(report)
    assert text.startswith("LoadReport:") and "warpnet.block.conv6.bias" in text


def test_num_batches_tracked_loaded_or_defaulted():
    source = randomized(StandIn().state_dict())
    assert source[f"{NORM3}.num_batches_tracked"].dtype == torch.int64
    model = StandIn()
    ckpt.load_into(model, source)
    assert model.state_dict()[f"{DOWN1}.num_batches_tracked"].item() == source[f"{NORM3}.num_batches_tracked"].item()

    no_counters = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    report = ckpt.load_into(StandIn(), no_counters, strict=True)
    assert report.ok and sorted(report.defaulted) == [f"{DOWN1}.num_batches_tracked", f"{NORM3}.num_batches_tracked"]


def test_load_into_strips_prefixes_and_accepts_files(tmp_path):
    source = randomized(StandIn().state_dict())
    model = StandIn()
    assert ckpt.load_into(model, {"module." + k: v for k, v in source.items()}).ok

    raft_file = {"module." + k[len("flownet.") :]: v for k, v in source.items() if k.startswith("flownet.")}
    report = ckpt.load_into(StandIn(), raft_file, strict=False)
    assert not report.unexpected and all(k.startswith(("warpnet.", "rgb_extractor.")) for k in report.missing)

    path = tmp_path / "model-best.pth"
    save_with_fake_torchlight(training_checkpoint(source), path)
    model = StandIn()
    assert ckpt.load_into(model, path).ok
    assert torch.equal(model.state_dict()["warpnet.block.conv6.weight"], source["warpnet.block.conv6.weight"])


# ---------------------------------------------------------------------------------------------------------------------
# Bad files
# ---------------------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="not found"):
        ckpt.load_safetensors(tmp_path / "nope.safetensors")


def test_truncated_zip_checkpoint(tmp_path):
    full = tmp_path / "full.pth"
    torch.save(StandIn().state_dict(), full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        ckpt.read_checkpoint(cut)
    assert str(cut) in str(info.value)


def test_truncated_safetensors(tmp_path):
    full = tmp_path / "full.safetensors"
    ckpt.save_safetensors(StandIn(), full)
    data = full.read_bytes()
    for name in ("cut.safetensors", "cut.bin"):  # detected by extension and by signature
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
            ckpt.read_checkpoint(cut)
        assert str(cut) in str(info.value)


def test_not_a_checkpoint(tmp_path):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(CheckpointError, match="not a PyTorch"):
        ckpt.read_checkpoint(noise)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        ckpt.read_checkpoint(empty)


def test_torchscript_archive_is_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in recent releases
        torch.jit.script(nn.Linear(2, 2)).save(os.fspath(path))
    with pytest.raises(CheckpointError, match="TorchScript"):
        ckpt.read_checkpoint(path)


def test_non_string_keys_are_refused():
    with pytest.raises(CheckpointError, match="strings"):
        ckpt.load_into(StandIn(), {0: torch.zeros(1)})


def test_file_without_tensors(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "note": "no weights"}, path)
    with pytest.raises(CheckpointError, match="no state dict of tensors"):
        ckpt.read_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------------
# Safetensors
# ---------------------------------------------------------------------------------------------------------------------


def test_safetensors_round_trip_with_aliases_and_metadata(tmp_path):
    from safetensors import safe_open

    model = StandIn()
    ckpt.load_into(model, randomized(model.state_dict()))
    path = tmp_path / "weights.safetensors"
    ckpt.save_safetensors(model, path, metadata={"preset": "cave-x8", "bands": "31"})

    with safe_open(os.fspath(path), framework="pt") as f:
        stored = set(f.keys())
    assert (f"{NORM3}.weight" in stored) != (f"{DOWN1}.weight" in stored)  # stored once

    sd, meta = ckpt.load_safetensors(path)
    assert meta["preset"] == "cave-x8" and meta["bands"] == "31"
    assert not any(k.startswith("sschsr_deploy") for k in meta)
    expected = model.state_dict()
    assert set(sd) == set(expected)
    assert all(torch.equal(sd[k], expected[k]) and sd[k].dtype == expected[k].dtype for k in expected)

    fresh = StandIn()
    assert ckpt.load_into(fresh, sd).ok
    assert set(ckpt.load_official_checkpoint(path)) == set(expected)
    assert sorted(os.listdir(tmp_path)) == ["weights.safetensors"]  # no temp file left behind


def test_safetensors_full_manifest_round_trip(tmp_path):
    full = manifest_state_dict(seed=7)
    path = tmp_path / "full.safetensors"
    ckpt.save_safetensors(full, path)
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        assert len(list(f.keys())) == 575
    sd = ckpt.read_checkpoint(path)
    assert len(sd) == 585
    assert all(torch.equal(sd[k], full[k]) for k in full)


def test_failed_safetensors_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    target = tmp_path / "weights.safetensors"

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(CheckpointError, match="disk full"):
        ckpt.save_safetensors(StandIn(), target)
    assert os.listdir(tmp_path) == []

    target.write_bytes(b"previous version")
    with pytest.raises(CheckpointError):
        ckpt.save_safetensors(StandIn(), target)
    assert target.read_bytes() == b"previous version"
    assert os.listdir(tmp_path) == ["weights.safetensors"]


def test_safetensors_rejected_tensor_leaves_nothing(tmp_path):
    target = tmp_path / "weights.safetensors"
    # safetensors itself refuses bits8 tensors once it is writing the (temporary) file.
    with pytest.raises(CheckpointError, match="writing the safetensors file failed"):
        ckpt.save_safetensors({"a": torch.zeros(3), "b": torch.zeros(4, dtype=torch.bits8)}, target)
    assert os.listdir(tmp_path) == []
    with pytest.raises(CheckpointError, match="dense"):
        ckpt.save_safetensors({"s": torch.eye(3).to_sparse()}, target)
    with pytest.raises(CheckpointError, match="str to str"):
        ckpt.save_safetensors({"a": torch.zeros(3)}, target, metadata={"bands": 31})
    assert os.listdir(tmp_path) == []
