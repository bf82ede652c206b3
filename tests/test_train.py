"""Training: samples match what the runtime feeds the network, runs write loadable weights + card, resume works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sschsr_deploy.checkpoint import load_safetensors
from sschsr_deploy.runtime import load_model
from sschsr_deploy.train import (
    NetworkSamples,
    StageTwoSamples,
    TrainConfig,
    _build,
    _lr_at,
    make_sample,
    matching_accuracy,
    misalignment_at,
    sample_from_scene,
    train,
)


def test_sample_is_on_the_runtime_scale():
    s = make_sample(7, 128, 4)
    hsi_sr, rgb, ref, rgb_flow, ref_flow = s.inputs
    assert hsi_sr.shape == s.target.shape == (1, 31, 128, 128) and s.flow.shape == (1, 2, 128, 128)
    # the network input is the clipped bicubic upsampling of the min-max normalised LR cube, and the target shares
    # that normalisation (the runtime's output_scale="input" undoes exactly it)
    torch.testing.assert_close(hsi_sr, s.bicubic.clamp(0, 1), atol=1e-5, rtol=0)
    assert 0.0 <= float(s.target.min()) and float(s.target.max()) < 1.5
    assert float(s.flow.abs().max()) > 0.5  # the photo is misaligned
    assert float(ref_flow.max()) > 200  # RAFT inputs on the 0..255 scale
    # deterministic
    torch.testing.assert_close(make_sample(7, 128, 4).target, s.target, rtol=0, atol=0)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-5)
    lrs = [_lr_at(i, cfg) for i in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)


def test_final_stage_restarts_the_learning_rate():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-5, final_steps=40, final_lr=3e-4, final_warmup=5)
    lrs = [_lr_at(i, cfg) for i in range(140)]
    assert lrs[99] == pytest.approx(1e-5, rel=0.05)  # stage 2 ends where it did without stage 3
    assert lrs[99] == _lr_at(99, TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-5, final_steps=0))
    assert lrs[100] < lrs[104] == pytest.approx(3e-4)  # warm-up to final_lr
    assert all(a >= b for a, b in zip(lrs[104:], lrs[105:], strict=False))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.1)


def test_final_stage_draws_whole_larger_scenes_after_stage_two():
    cfg = TrainConfig(batch=2, crop=64, scene_sizes="64", steps=5, final_steps=3, final_crop=128)
    data = NetworkSamples(cfg)
    assert data.total_steps == 8
    assert [s.target.shape[-1] for s in data.batch(4)] == [64, 64]
    assert [s.target.shape[-1] for s in data.batch(5)] == [128, 128]
    # stage 3 continues the seed sequence (no scene of stage 2 again) at the full misalignment
    seeds = {data.stage_two.plan(step, i)[0] for step in range(5) for i in range(2)}
    final = {data.final.plan(step, i)[0] for step in range(5, 8) for i in range(2)}
    assert len(final) == 6 and not seeds & final
    assert misalignment_at(5, cfg) == cfg.misalignment
    # stage 2 is unchanged by a stage 3 after it
    plain = NetworkSamples(TrainConfig(batch=2, crop=64, scene_sizes="64", steps=5, final_steps=0))
    torch.testing.assert_close(plain.batch(3)[1].target, data.batch(3)[1].target, rtol=0, atol=0)
    assert plain.final is None


def test_short_run_writes_weights_card_and_resumes(tmp_path):
    cfg = TrainConfig(raft_steps=2, raft_batch=1, raft_pool=2, match_steps=2, match_batch=1, steps=2, batch=1,
                      crop=128, scene_sizes="128", val_every=2, checkpoint_every=1, val_scenes=1,
                      final_steps=0)  # RAFT trains: 128²
    card = train(cfg, tmp_path)
    for name in ("weights.safetensors", "card.json", "history.json", "checkpoint.pt", "match_checkpoint.pt",
                 "raft_checkpoint.pt"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "card.json").read_text())["weights_sha256"] == card["weights_sha256"]
    assert card["data"]["samples"] == 4 and np.isfinite(card["validation"]["psnr_model"])
    sd, meta = load_safetensors(tmp_path / "weights.safetensors")
    assert meta["preset"] == "tiny" and meta["scale"] == "4"
    model, info = load_model("tiny", tmp_path / "weights.safetensors")
    assert not info["random_weights"]
    # the same name for the same tensors everywhere (ONNX metadata, sidecars): the state-dict hash, not the file hash
    assert info["weights_sha256"] == card["weights_sha256"] != info["weights_file_sha256"]
    # a second call with the same config finds the finished checkpoint and does not train again
    again = train(cfg, tmp_path)
    assert again["weights_sha256"] == card["weights_sha256"]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["step"] == [1, 2] and len(history["match_loss"]) == 2 and len(history["loss_warp"]) == 2
    assert history["raft_step"] == [1, 2] and history["raft_val_step"] == [2]
    assert card["flow"]["epe_zero_flow"] > 0.5 and np.isfinite(card["flow"]["epe_raft"])
    assert set(card["stage_seconds_this_run"]) == {"flow", "matching", "network"}
    assert 0.0 <= card["matching"]["match_within_1_cell"] <= 1.0


def test_raft_is_fixed_at_zero_flow_without_flow_training():
    s = make_sample(11, 128, 4)
    fixed = _build(TrainConfig(raft_steps=0))
    assert not any(p.requires_grad for p in fixed.flownet.parameters())
    assert all(p.requires_grad for p in fixed.decoder.parameters())
    with torch.no_grad():
        assert float(fixed(*s.inputs, return_all=True)["flow"].abs().max()) == 0.0
    for cfg in (TrainConfig(flow_weight=0.02), TrainConfig(raft_steps=10)):  # stage-2 flow loss, or stage 0
        trained = _build(cfg)
        assert all(p.requires_grad for p in trained.flownet.parameters())
        with torch.no_grad():
            assert float(trained(*s.inputs, return_all=True)["flow"].abs().max()) > 0.0


def test_sample_carries_the_aligned_photo():
    s = make_sample(7, 128, 4)
    assert s.ref_aligned.shape == (1, 3, 128, 128)
    ref = s.inputs[2]
    assert 0.0 < float((s.ref_aligned - ref).abs().mean()) < 0.1  # close to the photo, but not the misaligned photo


def test_sample_misalignment_knob():
    aligned = make_sample(7, 128, 4, misalignment=0.0)
    assert float(aligned.flow.abs().max()) == 0.0
    half, full = make_sample(7, 128, 4, misalignment=0.5), make_sample(7, 128, 4)
    # the generator draws the same fields; only the bounds scale, so the flow scales with them (to first order: the
    # rotation and the perspective denominator are not linear in their bounds)
    assert float(full.flow.abs().max()) > 1.0
    torch.testing.assert_close(half.flow * 2, full.flow, atol=0.01, rtol=0)
    torch.testing.assert_close(half.target, full.target, rtol=0, atol=0)  # the cube does not depend on the photo


def test_misalignment_curriculum():
    off = TrainConfig(steps=100, misalignment_ramp=0.0)
    assert [misalignment_at(i, off) for i in (0, 50, 99)] == [1.0, 1.0, 1.0]
    cfg = TrainConfig(steps=100, misalignment_ramp=0.4)
    scales = [misalignment_at(i, cfg) for i in range(100)]
    assert scales[0] == 0.0 and scales[20] == pytest.approx(0.5) and scales[40:] == [1.0] * 60
    assert all(a <= b for a, b in zip(scales, scales[1:], strict=False))
    # the end point of the ramp: 0 gives aligned photos throughout (the alignment diagnostic)
    aligned = TrainConfig(steps=100, misalignment=0.0)
    assert {misalignment_at(i, aligned) for i in range(100)} == {0.0}
    half = TrainConfig(steps=100, misalignment_ramp=0.4, misalignment=0.5)
    assert misalignment_at(20, half) == pytest.approx(0.25) and misalignment_at(70, half) == 0.5


def test_offset_alignment_loss_compares_each_level_to_the_scaled_flow():
    from sschsr_deploy.train import offset_alignment_loss

    torch.manual_seed(0)
    s = make_sample(3, 128, 4)
    model = _build(TrainConfig())
    trace: dict = {}
    model(*s.inputs, return_all=True, trace=trace)
    # a constant flow with different x and y: catches an (x, y) / (dy, dx) mix-up and a missing division by the stride
    flow = torch.empty(1, 2, 128, 128)
    flow[:, 0], flow[:, 1] = 2.0, -6.0
    loss = offset_alignment_loss(model, trace, flow)
    # the offset predictors start at zero, so every tap's offset is the patch-match offset of its level (x, y order)
    expected = []
    for tag, stride in (("3", 4), ("2", 2), ("1", 1)):
        pre = trace[f"match.offset_relu{tag}"]  # B x 9 x h x w x 2, (x, y)
        target = torch.tensor([2.0 / stride, -6.0 / stride])
        expected.append((pre - target).abs().mean())
    assert float(torch.stack(expected).abs().sum()) > 0
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)
    loss.backward()  # the loss reaches the offset predictors
    grad = model.decoder.up_small_dyn_agg.conv_offset_mask.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_stage0_losses():
    from sschsr_deploy.train import _pretrain_flow

    val = [make_sample(5, 128, 4, "test")]
    for loss in ("l1", "mse"):
        cfg = TrainConfig(raft_steps=2, raft_batch=1, raft_pool=1, raft_loss=loss, val_every=1)
        model = _build(cfg)
        before = [p.detach().clone() for p in model.flownet.parameters()]
        history = _pretrain_flow(model, cfg, val)
        assert history["raft_step"] == [1, 2] and all(v > 0 for v in history["raft_loss"])
        assert any(not torch.equal(b, p) for b, p in zip(before, model.flownet.parameters(), strict=True))
    with pytest.raises(ValueError, match="raft_loss"):
        _pretrain_flow(_build(TrainConfig(raft_steps=1)), TrainConfig(raft_steps=1, raft_loss="huber"), val)


def test_sample_camera_jitter_changes_only_the_photo():
    plain, jit = make_sample(9, 128, 4), make_sample(9, 128, 4, camera_jitter=1.0)
    torch.testing.assert_close(plain.target, jit.target, rtol=0, atol=0)
    torch.testing.assert_close(plain.flow, jit.flow, rtol=0, atol=0)
    assert float((plain.inputs[2] - jit.inputs[2]).abs().mean()) > 0.01


def test_matching_accuracy_finds_an_identical_photo_and_reports_zero_flow():
    model = _build(TrainConfig()).eval()
    ex = model.rgb_extractor
    ex.feature_extraction_image2.load_state_dict(ex.feature_extraction_image1.state_dict())
    same = make_sample(13, 128, 4, misalignment=0.0)
    same.inputs = (same.inputs[0], same.inputs[1], same.inputs[1], same.inputs[3], same.inputs[4])
    found = matching_accuracy(model, [same])  # same features on both sides, no displacement: every patch finds itself
    assert found["zero_flow_within_1_cell"] == 1.0 and found["zero_flow_mean_error_cells"] == 0.0
    assert found["match_within_1_cell"] > 0.95
    # a photo displaced by (x, y) = (8, 4) px = (2, 1) cells: the photo at p + flow shows the cube at p
    shifted = make_sample(13, 128, 4, misalignment=0.0)
    photo = torch.roll(shifted.inputs[1], shifts=(4, 8), dims=(2, 3))
    shifted.inputs = (shifted.inputs[0], shifted.inputs[1], photo, shifted.inputs[3], shifted.inputs[4])
    shifted.flow = torch.tensor([8.0, 4.0]).view(1, 2, 1, 1).expand(1, 2, 128, 128)
    moved = matching_accuracy(model, [shifted])
    assert moved["zero_flow_mean_error_cells"] == pytest.approx(5**0.5) and moved["zero_flow_within_1_cell"] == 0.0
    # 0.72 measured: patches whose receptive field meets the border or the wrap-around seam match elsewhere; with x and
    # y swapped in the metric every match would be sqrt(2) cells off
    assert moved["match_within_1_cell"] > 0.6


# ------------------------------------------------------------------------------------------------ stage-2 data stream


def test_stage_two_stream_with_crop_sized_scenes_is_the_whole_scene_recipe():
    cfg = TrainConfig(batch=3, steps=40)
    data = StageTwoSamples(cfg)
    for step in (0, 5, 31):
        for i, s in enumerate(data.batch(step)):
            ref = make_sample(step * 3 + i, cfg.crop, 4, misalignment=misalignment_at(step, cfg),
                              camera_jitter=cfg.camera_jitter)
            assert torch.equal(s.target, ref.target) and torch.equal(s.inputs[2], ref.inputs[2])


def test_stage_two_stream_tiles_larger_scenes():
    cfg = TrainConfig(batch=2, crop=64, scene_sizes="64,128", steps=40)
    data = StageTwoSamples(cfg)
    assert data.cycle == 1 + 4
    # every slot visits each scene's tiles exactly once, on consecutive steps, with a new seed for every scene
    for slot in range(2):
        plans = [data.plan(step, slot) for step in range(15)]
        by_scene: dict[int, list] = {}
        for step, (seed, size, tile, first) in enumerate(plans):
            by_scene.setdefault(seed, []).append((step, size, tile, first))
        for seed, uses in by_scene.items():
            size = uses[0][1]
            tiles = [u[2] for u in uses]
            complete = uses[0][0] > 0 and uses[-1][0] < 14  # scenes cut by the window's ends are partial
            if complete:
                assert tiles == list(range((size // 64) ** 2)), (seed, uses)
            assert [u[0] for u in uses] == list(range(uses[0][0], uses[0][0] + len(uses)))
            assert len({u[3] for u in uses}) == 1  # one misalignment per scene: that of its first step
    seeds0 = {data.plan(s, 0)[0] for s in range(15)}
    seeds1 = {data.plan(s, 1)[0] for s in range(15)}
    assert not seeds0 & seeds1
    # a sample is the scene's window prepared on its own, and the stream is a pure function of the step
    seed, size, tile, first = data.plan(7, 1)
    assert size == 128
    from sschsr_deploy.train import _scene_for
    scene = _scene_for(seed, size, 4, misalignment=misalignment_at(first, cfg), camera_jitter=cfg.camera_jitter)
    top, left = (tile // 2) * 64, (tile % 2) * 64
    s = StageTwoSamples(cfg).sample(7, 1)  # fresh instance: no cached scene
    ref = sample_from_scene(scene, (top, left, 64))
    assert torch.equal(s.target, ref.target) and torch.equal(s.flow, ref.flow)
    assert torch.equal(data.sample(7, 1).inputs[0], s.inputs[0])
    torch.testing.assert_close(s.flow, torch.from_numpy(
        np.ascontiguousarray(-scene.displacement[top:top + 64, left:left + 64, ::-1].transpose(2, 0, 1)))[None])


def test_window_sample_is_prepared_on_its_own_scale():
    from sschsr_deploy.train import _scene_for
    scene = _scene_for(21, 128, 4)
    whole = sample_from_scene(scene)
    torch.testing.assert_close(whole.target, make_sample(21, 128, 4).target, rtol=0, atol=0)
    win = sample_from_scene(scene, (64, 32, 64))
    assert win.target.shape == (1, 31, 64, 64) and win.inputs[2].shape[-2:] == (64, 64)
    # its own min-max normalisation: the window's LR cube spans exactly [0, 1]
    lr = scene.lr_hsi[16:32, 8:24]
    lo, hi = float(lr.min()), float(lr.max())
    expected = (scene.hr_hsi[64:128, 32:96].astype(np.float64) - lo) / (hi - lo)
    torch.testing.assert_close(win.target, torch.from_numpy(expected.transpose(2, 0, 1).astype(np.float32))[None])
    with pytest.raises(ValueError, match="LR grid"):
        sample_from_scene(scene, (2, 0, 64))


@pytest.mark.parametrize("sizes", ["", "128,x", "96", "64", "128,200"])
def test_bad_scene_sizes_are_refused(sizes):
    with pytest.raises(ValueError, match="scene_sizes"):
        StageTwoSamples(TrainConfig(crop=128, scene_sizes=sizes))


@pytest.mark.parametrize("field,value", [("match_crop", 130), ("val_size", 0), ("val_size", 130)])
def test_bad_stage_sizes_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        StageTwoSamples(TrainConfig(**{field: value}))


@pytest.mark.parametrize("field,value,kw", [
    ("crop", 96, {"raft_steps": 10}), ("crop", 96, {"flow_weight": 0.02}),  # stage 2 runs RAFT: 128² at least
    ("crop", 56, {}), ("crop", 132, {}), ("crop", 100, {}),  # RAFT bypassed: 64² and the 8-px grid still hold
    ("match_crop", 64, {}), ("val_size", 120, {}), ("val_size", 96, {}),  # these stages always run RAFT
    ("misalignment", -0.5, {}), ("misalignment", float("nan"), {}),
    ("final_crop", 56, {}), ("final_crop", 100, {}),  # stage 3 too: 64² and the 8-px grid without RAFT,
    ("final_crop", 96, {"raft_steps": 10, "crop": 128, "scene_sizes": "128"}),  # 128² with it
    ("final_steps", -1, {})])
def test_sizes_the_network_cannot_take_are_refused_before_any_work(tmp_path, field, value, kw):
    # below 128² RAFT's flow is NaN everywhere and the warped photo silently corrupted (what a 96² crop run trained on)
    if field == "crop":
        kw = {**kw, "scene_sizes": str(value)}
    if field == "final_crop":
        kw = {**kw, "final_steps": 1}
    with pytest.raises(ValueError, match=f"{field}={value}"):
        train(TrainConfig(**{field: value}, **kw), tmp_path)
    assert not any(tmp_path.iterdir())


def test_zero_flow_stand_in_is_exact_and_puts_raft_back():
    # stage 2 with RAFT fixed at zero flow runs ZeroFlow instead: the same network output to the last bit
    from sschsr_deploy.train import ZeroFlow, _bypasses_raft, _raft_swapped

    s = make_sample(11, 128, 4, misalignment=1.0)
    model = _build(TrainConfig()).train()
    raft = model.flownet
    with torch.no_grad():
        real = model(*s.inputs, return_all=True)
        with _raft_swapped(model, True):
            assert isinstance(model.flownet, ZeroFlow)
            stand_in = model(*s.inputs, return_all=True)
    assert model.flownet is raft
    assert float(real["flow"].abs().max()) == 0.0 and stand_in["flow"].shape == real["flow"].shape
    torch.testing.assert_close(stand_in["out"], real["out"], rtol=0, atol=0)
    with pytest.raises(RuntimeError), _raft_swapped(model, True):  # put back on errors too
        raise RuntimeError("boom")
    assert model.flownet is raft and "flownet.fnet.conv1.weight" in model.state_dict()
    assert _bypasses_raft(TrainConfig()) and not _bypasses_raft(TrainConfig(raft_steps=5))
    assert not _bypasses_raft(TrainConfig(flow_weight=0.1))


def test_small_crops_train_without_raft_and_ship_the_whole_network(tmp_path):
    # 64² crops (RAFT could not take them), then a stage-3 step on 128² scenes: finite losses, and the weights still
    # hold the zeroed RAFT
    cfg = TrainConfig(match_steps=1, match_batch=1, steps=2, batch=2, crop=64, scene_sizes="64,128", val_scenes=1,
                      val_every=2, final_steps=1, final_crop=128)
    card = train(cfg, tmp_path)
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["step"] == [1, 2, 3] and history["val_step"] == [2, 3]
    assert card["data"]["samples"] == 3 * 2 + 1 and card["data"]["final_crop"] == 128
    assert np.all(np.isfinite(history["loss"])) and np.isfinite(card["validation"]["psnr_model"])
    model, _ = load_model("tiny", tmp_path / "weights.safetensors")
    head = model.flownet.update_block.flow_head.conv2
    assert float(head.weight.abs().max()) == 0.0 and float(model.flownet.fnet.conv1.weight.abs().max()) > 0.0


def test_stage_one_and_validation_sizes_are_their_own(tmp_path, monkeypatch):
    # stage 1 on 136² scenes, validation on 144² scenes, stage 2 on 128² crops: each stage draws the size it is given
    import sschsr_deploy.train.stages as train_mod

    drawn: list[tuple[str, int]] = []
    real = train_mod.make_sample

    def spy(seed, size, scale, split="train", **kw):
        drawn.append((split, size))
        return real(seed, size, scale, split, **kw)

    monkeypatch.setattr(train_mod, "make_sample", spy)
    cfg = TrainConfig(match_steps=1, match_batch=1, match_crop=136, steps=1, batch=1, crop=128, scene_sizes="128",
                      val_size=144, val_scenes=1, val_every=1, final_steps=0)
    card = train(cfg, tmp_path)
    assert ("test", 144) in drawn and ("train", 136) in drawn and ("test", 128) not in drawn
    assert card["data"]["crop"] == 128 and card["data"]["match_crop"] == 136
    assert np.isfinite(card["validation"]["psnr_model"])
