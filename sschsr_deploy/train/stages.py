"""The training stages and the run that chains them: stage 0 (RAFT, optional), stage 1 (the correspondence
extractors), stages 2-3 (the network), with their learning-rate schedules, RAFT's zero-flow bypass and the resumable
checkpoints; :func:`train` writes the weights, the card and the curves."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.flow_pairs import FlowPairPool
from ..io.atomic import atomic_path, atomic_write_json
from ..model.presets import MIN_SIZE
from ..weights import ModelMeta
from .config import VALIDATION_SEED, TrainConfig, _bypasses_raft, _raft_eval_in_stage2, _raft_frozen, check_model_sizes
from .curves import plot_curves
from .evaluation import flow_error, matching_accuracy, validate
from .losses import contrastive_match_loss, network_loss, raft_sequence_loss
from .sampling import NetworkSamples, Sample, _collate, make_sample

log = logging.getLogger(__name__)


def _cosine(step: int, steps: int, peak: float, floor: float, warmup: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor`` at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(t, 1.0)))


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of network step ``step``: stage 2's schedule, then stage 3's restart (from ``final_lr``)."""
    if step < cfg.steps:
        return _cosine(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup)
    return _cosine(step - cfg.steps, cfg.final_steps, cfg.final_lr, cfg.min_lr, cfg.final_warmup)


def _optimizer_step(opt: torch.optim.Optimizer, loss: Tensor, params, clip: float) -> None:
    """Backward, clip the gradient norm of ``params`` to ``clip``, step: the update every stage makes."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def _build(cfg: TrainConfig) -> nn.Module:
    from ..model import SSCHSR

    torch.manual_seed(cfg.seed)
    model = SSCHSR.from_preset(cfg.preset)
    model.validate_inputs = False
    for p in model.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        model.decoder.res3.output.weight.mul_(0.1)
        if _bypasses_raft(cfg):  # RAFT fixed at zero flow: its update head outputs 0
            head = model.flownet.update_block.flow_head.conv2
            head.weight.zero_()
            head.bias.zero_()
            model.flownet.requires_grad_(False)
    return model


class ZeroFlow(nn.Module):
    """Stands in for a RAFT fixed at zero flow during stage 2: the same output (exactly zero, B x 2 x H x W) without
    computing it, and without RAFT's 128² minimum, which the zeroed RAFT needs only to avoid NaN (0 x NaN = NaN)."""

    def forward(self, image1: Tensor, image2: Tensor, trace: dict | None = None) -> Tensor:
        return image1.new_zeros(image1.shape[0], 2, *image1.shape[2:])


@contextmanager
def _raft_swapped(model: nn.Module, active: bool) -> Iterator[None]:
    """While active, ``model.flownet`` is a :class:`ZeroFlow` (the real RAFT, zeroed, is put back afterwards, so the
    checkpoints and the shipped weights keep it)."""
    if not active:
        yield
        return
    raft = model.flownet
    model.flownet = ZeroFlow()
    try:
        yield
    finally:
        model.flownet = raft


def _pretrain_flow(model: nn.Module, cfg: TrainConfig, val: list[Sample]) -> dict[str, list]:
    """Stage 0: RAFT alone on :class:`FlowPairPool` pairs (RAFT's sequence loss: every iteration's 1/8-resolution
    flow weighted 0.8^(n-1-i), plus the upsampled flow), cosine schedule from ``raft_lr``. Curriculum: the share of
    photo-to-photo pairs falls linearly from 1 to 0 over the first ``raft_same_modality`` of the steps. ``raft_loss``
    picks L1 (RAFT's; learns one flow axis at a time here) or MSE (both axes together, more slowly; see
    docs/training.md)."""
    losses = {"l1": F.l1_loss, "mse": F.mse_loss}
    if cfg.raft_loss not in losses:
        raise ValueError(f"raft_loss must be one of {sorted(losses)}, got {cfg.raft_loss!r}")
    loss_fn = losses[cfg.raft_loss]
    raft = model.flownet
    raft.train()
    crop = max(cfg.crop, MIN_SIZE)  # RAFT's own minimum (train() refuses smaller stage-2 crops when stage 0 runs)
    pool = FlowPairPool(cfg.raft_pool, max(crop + 64, 192), crop, cfg.scale, cfg.raft_max_displacement,
                        seed=cfg.seed)
    opt = torch.optim.AdamW(raft.parameters(), lr=cfg.raft_lr, weight_decay=1e-5)
    history: dict[str, list] = {"raft_step": [], "raft_loss": [], "raft_val_step": [], "raft_val_epe": []}
    for step in range(cfg.raft_steps):
        for g in opt.param_groups:
            g["lr"] = _cosine(step, cfg.raft_steps, cfg.raft_lr, cfg.raft_lr / 25, max(cfg.raft_steps // 20, 1))
        fade = cfg.raft_same_modality * cfg.raft_steps
        hsi, ref, flow = pool.batch(cfg.raft_batch, same_modality=max(0.0, 1.0 - step / fade) if fade else 0.0)
        trace: dict[str, Tensor] = {}
        pred = raft(hsi, ref, trace=trace)
        final = F.l1_loss(pred, flow)
        loss = raft_sequence_loss(pred, trace["raft.flow_lowres_iters"], flow, loss_fn)
        _optimizer_step(opt, loss, raft.parameters(), cfg.grad_clip)
        history["raft_step"].append(step + 1)
        history["raft_loss"].append(final.item())
        if (step + 1) % (4 * cfg.val_every) == 0 or step + 1 == cfg.raft_steps:
            e = flow_error(raft, val)
            history["raft_val_step"].append(step + 1)
            history["raft_val_epe"].append(e["epe_raft"])
            log.info("flow step %d/%d L1 %.3f (mean of the last %d) held-out EPE %.3f px (zero flow %.3f)", step + 1,
                     cfg.raft_steps, float(np.mean(history["raft_loss"][-4 * cfg.val_every:])), 4 * cfg.val_every,
                     e["epe_raft"], e["epe_zero_flow"])
    return history


def _train_matching(model: nn.Module, cfg: TrainConfig) -> dict[str, list]:
    """Stage 1: the contrastive extractors alone (cosine schedule from ``match_lr``)."""
    params = list(model.rgb_extractor.parameters())
    opt = torch.optim.Adam(params, lr=cfg.match_lr)
    steps, losses = [], []
    for step in range(cfg.match_steps):
        batch = [make_sample(cfg.seed * 10_000_000 + 5_000_000 + step * cfg.match_batch + i, cfg.match_crop,
                             cfg.scale, camera_jitter=cfg.camera_jitter)
                 for i in range(cfg.match_batch)]
        inputs, _, flow_gt, _ = _collate(batch)
        for g in opt.param_groups:
            g["lr"] = _cosine(step, cfg.match_steps, cfg.match_lr, cfg.match_lr / 20, cfg.warmup)
        loss = contrastive_match_loss(model, inputs, flow_gt, cfg.match_temperature)
        _optimizer_step(opt, loss, params, cfg.grad_clip)
        steps.append(step + 1)
        losses.append(loss.item())
        if (step + 1) % cfg.val_every == 0:
            log.info("match step %d/%d InfoNCE %.3f (mean of the last %d)", step + 1, cfg.match_steps,
                     float(np.mean(losses[-cfg.val_every:])), cfg.val_every)
    return {"match_step": steps, "match_loss": losses}


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, history: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "history": json.dumps(history)}, tmp)


def _load_checkpoint(path: Path, model: nn.Module) -> tuple[int, dict, dict]:
    """Load a stage-2 checkpoint's weights into ``model``; returns its step, history and optimizer state (loaded into
    the optimizer once that exists)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return int(state["step"]), json.loads(state["history"]), state["optimizer"]


def _run_or_load_stage(path: Path, module: nn.Module, key: str, resume: bool, history: dict,
                       run: Callable[[], dict]) -> bool:
    """A pretraining stage: load ``module`` (and the stage's history) from ``path`` when resuming the same config, else
    ``run()`` it, merge its history and save the module atomically. True when the stage ran."""
    if resume and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state[key])
        history.update(json.loads(state["history"]))
        log.info("%s loaded from %s", key, path)
        return False
    history.update(run())
    with atomic_path(path) as tmp:
        torch.save({key: module.state_dict(), "history": json.dumps(history)}, tmp)
    return True


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = True) -> dict[str, Any]:
    """Train and write ``out_dir/{weights.safetensors, card.json, curves.png, checkpoint.pt}``; returns the card.

    With ``resume`` a ``checkpoint.pt`` in ``out_dir`` from an earlier (interrupted) run of the same config is
    continued; the data stream is a pure function of (seed, step), so a resumed run sees the same samples.
    """
    from ..checkpoint import save_safetensors, state_dict_sha256

    check_model_sizes(cfg)
    data = NetworkSamples(cfg)  # checks the config's scene sizes before any work
    total = data.total_steps
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    model = _build(cfg).train()
    history: dict[str, list] = {"step": [], "loss": [], "loss_cube": [], "loss_flow": [], "loss_warp": [],
                                "val_step": [], "val_psnr_model": [], "val_psnr_bicubic": []}
    start = 0
    ckpt = out / "checkpoint.pt"
    cfg_path = out / "train_config.json"
    opt_state = None
    # checkpoints of a run with another config are not resumed (stage 1 either)
    same_config = resume and cfg_path.exists() and json.loads(cfg_path.read_text()) == asdict(cfg)
    if same_config and ckpt.exists():
        start, history, opt_state = _load_checkpoint(ckpt, model)
        log.info("resumed from step %d", start)
    atomic_write_json(cfg_path, asdict(cfg))
    val = [make_sample(VALIDATION_SEED + i, cfg.val_size, cfg.scale, "test") for i in range(cfg.val_scenes)]
    t_start = t0 = time.perf_counter()
    stage_seconds: dict[str, float] = {}
    if start == 0:
        if cfg.raft_steps and _run_or_load_stage(out / "raft_checkpoint.pt", model.flownet, "flownet", same_config,
                                                 history, lambda: _pretrain_flow(model, cfg, val)):
            stage_seconds["flow"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        if _run_or_load_stage(out / "match_checkpoint.pt", model.rgb_extractor, "rgb_extractor", same_config, history,
                              lambda: _train_matching(model, cfg)):
            stage_seconds["matching"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
    matching = matching_accuracy(model, val)  # the extractors are final here: stage 2 keeps them frozen
    log.info("matching on the validation scenes: %s", matching)
    if _raft_frozen(cfg):
        model.flownet.requires_grad_(False)
    for p in model.rgb_extractor.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    raft_eval = _raft_eval_in_stage2(cfg)
    model.flownet.train(not raft_eval)
    bypass = _bypasses_raft(cfg)
    for step in range(start, total):
        batch = data.batch(step)
        inputs, target, flow_gt, ref_aligned = _collate(batch)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        trace: dict[str, Tensor] | None = {} if cfg.offset_weight else None
        with _raft_swapped(model, bypass):
            res = model(*inputs, return_all=True, trace=trace)
        parts = network_loss(model, res, target, flow_gt, ref_aligned, trace, cfg)
        loss, loss_cube, loss_flow, loss_warp = parts["loss"], parts["cube"], parts["flow"], parts["warp"]
        if "offset" in parts:
            history.setdefault("loss_offset", []).append(parts["offset"].item())
        _optimizer_step(opt, loss, model.parameters(), cfg.grad_clip)
        history["step"].append(step + 1)
        history["loss"].append(loss.item())
        history["loss_cube"].append(loss_cube.item())
        history["loss_flow"].append(loss_flow.item())
        history["loss_warp"].append(loss_warp.item())
        done = step + 1
        if done % cfg.val_every == 0 or done == total:
            v = validate(model, val)
            model.flownet.train(not raft_eval)
            history["val_step"].append(done)
            history["val_psnr_model"].append(v["psnr_model"])
            history["val_psnr_bicubic"].append(v["psnr_bicubic"])
            rate = (done - start) / (time.perf_counter() - t0)
            log.info("step %d/%d loss %.4f (cube %.4f flow %.3f warp %.4f) val PSNR %.2f dB (bicubic %.2f) "
                     "%.2f steps/s", done, total, loss.item(), loss_cube.item(), loss_flow.item(),
                     loss_warp.item(), v["psnr_model"], v["psnr_bicubic"], rate)
        if done % cfg.checkpoint_every == 0 or done == total:
            _save_checkpoint(ckpt, model, opt, done, history)

    model.eval()
    weights = out / "weights.safetensors"
    # the one metadata schema (sschsr_deploy.weights.ModelMeta): load_model reads the preset, scale and bands back
    meta = {**ModelMeta(cfg.preset, int(cfg.scale), 31, tuple(model.config.rgb_bands),
                        model.batchnorm_mode).to_metadata(), "trained_by": "sschsr_deploy.train"}
    save_safetensors(model, weights, metadata=meta)
    card = {
        "preset": cfg.preset, "scale": cfg.scale, "bands": 31, "weights_sha256": state_dict_sha256(model),
        "config": asdict(cfg),
        "data": {"generator": "sschsr_deploy.data.make_scene", "split": "train", "crop": cfg.crop,
                 "final_crop": cfg.final_crop if cfg.final_steps else None, "match_crop": cfg.match_crop,
                 "samples": total * cfg.batch + cfg.match_steps * cfg.match_batch,
                 "scene_sizes": data.stage_two.sizes,
                 "sample_seeds": f"stages 2-3: NetworkSamples (StageTwoSamples.plan: seed*10_000_000 + "
                                 f"step*batch + i with whole crop² scenes; stage 3 continues the step count), "
                                 f"stage 1: seed*10_000_000 + 5_000_000 + step*match_batch + i "
                                 f"(seed={cfg.seed})",
                 "flow_pairs": {"pairs": cfg.raft_steps * cfg.raft_batch, "pool_scenes": cfg.raft_pool,
                                "generator": "sschsr_deploy.data.flow_pairs.FlowPairPool (aligned train-split scenes "
                                             "displaced by random fields)"}},
        "validation": {"split": "test", "seeds": [VALIDATION_SEED + i for i in range(cfg.val_scenes)],
                       "psnr_model": history["val_psnr_model"][-1] if history["val_psnr_model"] else None,
                       "psnr_bicubic": history["val_psnr_bicubic"][-1] if history["val_psnr_bicubic"] else None},
        "flow": flow_error(model.flownet, val),
        "matching": matching,
        "train_seconds_this_run": round(time.perf_counter() - t_start, 1),
        "stage_seconds_this_run": {**stage_seconds, "network": round(time.perf_counter() - t0, 1)},
        "torch": torch.__version__,
    }
    atomic_write_json(out / "card.json", card)
    atomic_write_json(out / "history.json", history)
    plot_curves(history, out / "curves.png", final_from=cfg.steps if cfg.final_steps else None)
    return card
