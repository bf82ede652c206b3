"""One loader for weights and their metadata (``sschsr_deploy.weights``), and the scale it carries into the pipeline.

Each silent mismatch the loader replaced is an error here: a requested scale / preset / band count that differs from
the file's, a preset named without weights (it used to return an untrained network), a run at another scale than the
model's, an export of one scale labelled as another.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sschsr_deploy.checkpoint import save_safetensors
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.runtime import Pipeline
from sschsr_deploy.runtime.backends import ExportSpec
from sschsr_deploy.weights import ModelMeta, load_model


@pytest.fixture(scope="module")
def tiny_x8():
    return load_model("tiny-x8")


def test_shipped_names_carry_their_scale(tiny_x8):
    model, info = tiny_x8
    assert model.config.scale == info["scale"] == 8 and info["preset"] == "tiny" and info["bands"] == 31
    assert info["random_weights"] is False and info["weights"] == "tiny_x8.safetensors"
    model4, info4 = load_model("tiny-x4")
    assert model4.config.scale == 4 and info4["weights_sha256"] != info["weights_sha256"]


@pytest.mark.parametrize("kwargs, match", [
    ({"scale": 4}, "scale 4 was requested but it is 8"),
    ({"bands": 30}, "bands 30 was requested but it is 31"),
    ({"rgb_bands": (1, 2, 3)}, "rgb_bands"),
])
def test_a_requested_field_that_differs_from_the_file_is_refused(kwargs, match):
    with pytest.raises(InputValidationError, match=match):
        load_model("tiny-x8", **kwargs)


def test_a_preset_alone_is_not_weights(caplog):
    with pytest.raises(InputValidationError, match="names a preset, not weights.*tiny-x4, tiny-x8.*random_weights"):
        load_model("tiny")
    with caplog.at_level(logging.WARNING, logger="sschsr_deploy.weights"):
        model, info = load_model("tiny", random_weights=True, scale=8, seed=3)
    assert "RANDOM WEIGHTS" in caplog.text
    assert info["random_weights"] is True and info["weights"] == "random" and model.config.scale == 8
    with pytest.raises(InputValidationError, match="contradicts"):
        load_model("tiny-x4", random_weights=True)


def test_safetensors_metadata_round_trip_and_preset_check(tmp_path):
    model, _ = load_model("tiny", random_weights=True, scale=8, rgb_bands=(20, 10, 2), batchnorm_mode="batch")
    meta = ModelMeta.of(model, "tiny")
    assert meta == ModelMeta("tiny", 8, 31, (20, 10, 2), "batch")
    path = tmp_path / "w.safetensors"
    save_safetensors(model, path, metadata=meta.to_metadata())
    loaded, info = load_model(path)
    assert ModelMeta.of(loaded, "tiny") == meta and info["rgb_bands"] == [20, 10, 2]
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(InputValidationError, match="preset 'official' was requested but it is 'tiny'"):
        load_model("official", path)
    bare = tmp_path / "bare.safetensors"  # no metadata and no preset named: nothing says what it is
    save_safetensors(model, bare)
    with pytest.raises(InputValidationError, match="no 'preset'"):
        load_model(bare)


def test_invalid_metadata_values_are_refused():
    base = ModelMeta("tiny", 4, 31, (15, 8, 3)).to_metadata()
    for key, bad in (("scale", "0"), ("bands", "x"), ("rgb_bands", "1,2"), ("batchnorm_mode", "eval")):
        with pytest.raises(InputValidationError, match=f"metadata {key}="):
            ModelMeta.from_metadata({**base, key: bad}, "file f")


def test_a_pth_checkpoint_takes_its_fields_from_arguments_and_checks_bands(tmp_path):
    model, _ = load_model("tiny", random_weights=True, bands=7, rgb_bands=(5, 3, 1))
    path = tmp_path / "own.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(InputValidationError, match="holds a 7-band model, but 31 bands were requested"):
        load_model("tiny", path)
    loaded, info = load_model("tiny", path, bands=7, rgb_bands=(5, 3, 1), scale=8)
    assert info["bands"] == 7 and loaded.config.scale == 8


def test_the_pipeline_runs_the_model_scale_and_refuses_another(tiny_x8):
    pipe = Pipeline(tiny_x8[0], model_info=tiny_x8[1], quiet=True)
    assert pipe.resolve_scale(None) == 8 and pipe.resolve_scale(8) == 8
    with pytest.raises(InputValidationError, match=r"scale 4 was requested but tiny_x8.safetensors was trained "
                                                   r"for x8.*tiny-x4"):
        pipe.resolve_scale(4)
    lr = np.random.default_rng(0).random((16, 16, 31), dtype=np.float32)
    ref = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    with pytest.raises(InputValidationError, match="scale 4 was requested"):
        pipe.run(lr, ref, 4)
    out = pipe.run(lr, ref)  # the model's x8
    assert out.shape == (128, 128, 31)


def test_exported_models_record_and_report_their_scale():
    meta = {**ModelMeta("tiny", 8, 31, (15, 8, 3)).to_metadata(), "tile_height": "128", "tile_width": "128",
            "tile_min": "128x128", "tile_max": "128x128", "batch_min": "1", "batch_max": "2"}
    spec = ExportSpec.from_export(meta, ["batch", 31, 128, 128], 31, "m.onnx")
    assert spec.scale == 8 and spec.config().scale == 8 and spec.config().rgb_bands == (15, 8, 3)
    assert ExportSpec.from_export({k: v for k, v in meta.items() if k != "scale"}, ["b", 31, 128, 128]).scale is None


def test_cli_refuses_a_scale_the_weights_were_not_trained_for(tmp_path, capsys):
    from sschsr_deploy.cli import main
    from sschsr_deploy.io import write_hsi, write_rgb

    write_hsi(tmp_path / "lr.npy", np.random.default_rng(0).random((16, 16, 31), dtype=np.float32))
    write_rgb(tmp_path / "ref.png", np.zeros((128, 128, 3), np.uint8))
    rc = main(["infer", "--hsi", str(tmp_path / "lr.npy"), "--ref", str(tmp_path / "ref.png"), "--scale", "8",
               "--weights", "tiny-x4", "--out", str(tmp_path / "out.npy"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "scale 8 was requested but it is 4" in err and not (tmp_path / "out.npy").exists()


def test_model_wavelengths_from_the_weights_metadata(tmp_path):
    """A model trained on other bands records its band centres; the pipeline maps cubes onto those."""
    from sschsr_deploy.runtime import Pipeline

    model, _ = load_model("tiny", random_weights=True, scale=4)
    meta = ModelMeta.of(model, "tiny").to_metadata()
    wl = [450.0 + 8.0 * i for i in range(31)]
    path = tmp_path / "w.safetensors"
    save_safetensors(model, path, metadata={**meta, "wavelengths": ",".join(map(str, wl))})
    _, info = load_model(path)
    assert info["wavelengths"] == wl
    assert Pipeline.from_pretrained(path, quiet=True).model_wavelengths == tuple(wl)
    assert Pipeline.from_pretrained("tiny-x4", quiet=True).model_wavelengths[::10] == (400.0, 500.0, 600.0, 700.0)
    for bad in ("1,2,3", ",".join(map(str, wl[::-1])), "a,b"):
        save_safetensors(model, path, metadata={**meta, "wavelengths": bad})
        with pytest.raises(InputValidationError, match="wavelengths"):
            load_model(path)
