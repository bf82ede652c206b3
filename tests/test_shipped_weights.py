"""The shipped tiny weights: present, described by their card, and really better than bicubic on held-out scenes."""

from __future__ import annotations

import numpy as np
import pytest

from sschsr_deploy import metrics
from sschsr_deploy.checkpoint import state_dict_sha256
from sschsr_deploy.data import make_scene
from sschsr_deploy.errors import InputValidationError
from sschsr_deploy.preprocess import bicubic_upsample
from sschsr_deploy.pretrained import SHIPPED, shipped_card, shipped_weights
from sschsr_deploy.runtime import Pipeline, load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", shipped_weights("tiny", 4))


@pytest.mark.parametrize("preset,scale", sorted(SHIPPED))
def test_card_describes_the_file(preset, scale):
    model, info = load_model(preset, shipped_weights(preset, scale))
    card = shipped_card(preset, scale)
    assert not info["random_weights"]
    assert card["weights_sha256"] == state_dict_sha256(model)
    assert card["preset"] == preset and card["scale"] == scale == card["config"]["scale"] and card["bands"] == 31
    assert card["config"]["steps"] > 0 and card["data"]["generator"] == "sschsr_deploy.data.make_scene"
    assert card["validation"]["psnr_model"] > card["validation"]["psnr_bicubic"]
    assert shipped_weights(preset, scale).with_name(f"{SHIPPED[preset, scale]}.curves.png").stat().st_size > 0


def test_x4_card_is_the_default_recipe():
    # the README's command (`python -m sschsr_deploy.train --out DIR`, all defaults) is what made the x4 weights
    from dataclasses import asdict

    from sschsr_deploy.train import TrainConfig

    assert shipped_card("tiny", 4)["config"] == asdict(TrainConfig())


def test_x8_card_is_the_readme_command():
    # the x8 weights predate the 64² crops: the README's x8 command spells out the recipe they were trained with
    from dataclasses import asdict

    from sschsr_deploy.train import TrainConfig

    readme_x8 = TrainConfig(scale=8, crop=128, scene_sizes="128", steps=1150, val_every=50, checkpoint_every=50,
                            final_steps=0)
    assert shipped_card("tiny", 8)["config"] == asdict(readme_x8)


def test_no_weights_for_other_presets_or_scales():
    for args in (("official", 4), ("tiny", 3)):
        with pytest.raises(InputValidationError, match="no shipped weights"):
            shipped_weights(*args)
    with pytest.raises(InputValidationError, match="no shipped weights"):
        shipped_weights("tiny", 4, bands=128)


@pytest.mark.parametrize("scale,seed,size,margin_db", [
    (4, 3, 128, 4.0),  # measured +5.76 dB (the demo's scene; v7 +5.78, v6 +4.33)
    (4, 424242, 192, 0.4),  # measured +1.15 dB (v7 +1.09, v6 +0.71): a scene where the gain is small (table: mean)
    (8, 3, 128, 2.5),  # measured +4.56 dB (+4.81 with the x8 weights before the camera jitter)
    (8, 424242, 192, 0.4),  # measured +1.41 dB (was +1.23)
])
def test_beats_bicubic_on_held_out_scenes(tiny, scale, seed, size, margin_db):
    model, info = tiny if scale == 4 else load_model("tiny", shipped_weights("tiny", scale))
    # held-out split: spectra, illuminants and camera never used in training; seeds outside every training range
    scene = make_scene(seed=seed, size=(size, size), scale=scale, split="test")
    gt = scene.hr_hsi.astype(np.float64)
    bicubic = np.clip(bicubic_upsample(scene.lr_hsi.astype(np.float64), scale), 0.0, 1.0)
    out = Pipeline(model, quiet=True, model_info=info).run(scene.lr_hsi, scene.ref_rgb, scale)
    assert metrics.psnr(out, gt) > metrics.psnr(bicubic, gt) + margin_db
    assert metrics.sam(out, gt) < metrics.sam(bicubic, gt)
