"""Benchmark of the training path: the deformable convolution's forward + backward, and one whole stage-2 step.

The deformable convolution needs gradients only in training, where the op dispatch takes
``modulated_deform_conv2d_sampled`` (one ``grid_sample`` over all taps); the baseline measured in the same run is the
gather reference it replaced there. Shapes: the ``tiny`` decoder's three levels for a batch of 4 128² crops (16 ch at
128², 32 at 64², 48 at 32²; 3×3, 8 offset groups, offsets with a standard deviation of 3 px), and one whole
``sschsr_deploy.train`` stage-2 step (forward, L1 + warp loss, backward) of the ``tiny`` model at the default batch and
crop, with either formulation. Data rows: the generator's LR degradation of one 128² x 31 cube, and one stage-2 batch
(4 generated samples of the recipe's crop), with the fused ``blur_decimate`` against the two-step
``decimate(blur(.))`` it replaced (same values, bit for bit; baseline measured in the same run). Recipe rows: the
stage-2 step with ``ZeroFlow`` standing in for the zeroed RAFT, at 128² and at the recipe's crop, against the step
before (RAFT run at zero flow, 128² crops).

    python benchmarks/bench_train_step.py --device cpu [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_output_arguments, bar_chart, environment, time_fn, use_output_arguments, write_json  # noqa: E402

import sschsr_deploy.ops.deform_conv as dcn  # noqa: E402

LEVELS = [(16, 128), (32, 64), (48, 32)]  # (channels, side) of the tiny decoder for 128² crops
BATCH = 4
OFFSET_GROUPS = 8


def dcn_step(fn, c: int, side: int, device: str):
    g = torch.Generator().manual_seed(c)
    t = [torch.randn(BATCH, c, side, side, generator=g),
         3.0 * torch.randn(BATCH, 2 * OFFSET_GROUPS * 9, side, side, generator=g),
         torch.sigmoid(torch.randn(BATCH, OFFSET_GROUPS * 9, side, side, generator=g)),
         torch.randn(c, c, 3, 3, generator=g) / (9 * c) ** 0.5, torch.zeros(c)]
    t = [x.to(device).requires_grad_() for x in t]

    def step():
        out = fn(*t, 1, 1, 1, 1, OFFSET_GROUPS)
        torch.autograd.grad(out.square().sum(), t)

    return step


def train_step(device: str, crop: int = 128, zero_flow_stand_in: bool = False):
    """One stage-2 step on ``crop``² samples; ``zero_flow_stand_in`` swaps the zeroed RAFT for ``ZeroFlow`` as
    training does (needed below 128²)."""
    from sschsr_deploy.train import TrainConfig, _build, _collate, _raft_swapped, make_sample

    cfg = TrainConfig()
    model = _build(cfg).to(device).train()
    model.flownet.requires_grad_(False)
    model.rgb_extractor.requires_grad_(False)
    inputs, target, _, ref_aligned = _collate([make_sample(i, crop, cfg.scale) for i in range(cfg.batch)])
    inputs = tuple(x.to(device) for x in inputs)
    target, ref_aligned = target.to(device), ref_aligned.to(device)

    def step():
        with _raft_swapped(model, zero_flow_stand_in):
            res = model(*inputs, return_all=True)
        loss = F.l1_loss(res["out"], target) + cfg.warp_weight * F.smooth_l1_loss(res["ref_warpnet"], ref_aligned,
                                                                                    beta=0.01)
        model.zero_grad(set_to_none=True)
        loss.backward()

    return step


def recipe_rows(device: str, repeat: int, before_ms: float) -> list[dict]:
    """The stage-2 step of the recipe (ZeroFlow in RAFT's place, ``TrainConfig().crop``² crops) and of the same crop
    size as before with ZeroFlow only, against the step before (``before_ms``: RAFT run, 128² crops)."""
    from sschsr_deploy.train import TrainConfig

    crop = TrainConfig().crop
    rows = []
    for what, c in (("stage-2 step, 128² crops, ZeroFlow instead of the zeroed RAFT", 128),
                    (f"stage-2 step of the recipe: {crop}² crops, ZeroFlow", crop)):
        ms = time_fn(train_step(device, c, zero_flow_stand_in=True), device, warmup=1, repeat=repeat)["median_ms"]
        rows.append({"what": what, "before_ms": before_ms, "ms": ms, "speedup_per_step": before_ms / ms,
                     "speedup_per_pixel": before_ms / ms * (c / 128) ** 2})
        print(rows[-1])
    return rows


def data_rows(repeat: int) -> list[dict]:
    """Sample generation with the fused degradation vs the two-step one (patched into the generator)."""
    import numpy as np

    import sschsr_deploy.data.synthetic as synthetic
    import sschsr_deploy.preprocess as preprocess
    from sschsr_deploy.preprocess import blur, blur_decimate, decimate
    from sschsr_deploy.train import TrainConfig, make_sample

    cfg = TrainConfig()
    cube = np.random.default_rng(0).random((cfg.crop, cfg.crop, 31)).astype(np.float32)
    seeds = iter(range(10**6))  # a new scene every call, as in training

    def batch():
        return [make_sample(next(seeds), cfg.crop, cfg.scale, camera_jitter=cfg.camera_jitter)
                for _ in range(cfg.batch)]

    def two_step(img, sf):
        return decimate(blur(img), sf)

    cases = [(f"LR degradation of one {cfg.crop}² x 31 cube (x{cfg.scale})",
              lambda: two_step(cube, cfg.scale), lambda: blur_decimate(cube, cfg.scale), None),
             (f"one stage-2 batch: {cfg.batch} generated {cfg.crop}² samples", batch, batch, two_step)]
    rows = []
    for what, base_fn, new_fn, patch in cases:
        new = time_fn(new_fn, "cpu", warmup=1, repeat=repeat)
        if patch is not None:  # the generator's cube and the preprocessing's photo degradation, as before
            synthetic.blur_decimate = preprocess.blur_decimate = patch
        try:
            base = time_fn(base_fn, "cpu", warmup=1, repeat=repeat)
        finally:
            synthetic.blur_decimate = preprocess.blur_decimate = blur_decimate
        rows.append({"what": what, "two_step_ms": base["median_ms"], "fused_ms": new["median_ms"],
                     "speedup": base["median_ms"] / new["median_ms"]})
        print(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    use_output_arguments(args)
    torch.set_num_threads(args.threads)
    repeat = 2 if args.quick else 5
    sampled, gather = dcn.modulated_deform_conv2d_sampled, dcn.modulated_deform_conv2d_reference
    rows = []
    for c, side in LEVELS:
        base = time_fn(dcn_step(gather, c, side, args.device), args.device, warmup=1, repeat=repeat)
        new = time_fn(dcn_step(sampled, c, side, args.device), args.device, warmup=1, repeat=repeat)
        rows.append({"what": f"deform conv fwd+bwd, batch {BATCH}, {c} ch, {side}x{side}",
                     "gather_reference_ms": base["median_ms"], "sampled_ms": new["median_ms"],
                     "speedup": base["median_ms"] / new["median_ms"]})
        print(rows[-1])
    step = train_step(args.device)
    new = time_fn(step, args.device, warmup=1, repeat=repeat)
    dcn.modulated_deform_conv2d_sampled = gather  # the dispatch's training path, switched back to the old one
    try:
        base = time_fn(step, args.device, warmup=1, repeat=repeat)
    finally:
        dcn.modulated_deform_conv2d_sampled = sampled
    rows.append({"what": "tiny stage-2 training step (batch 4, 128² crops, forward + loss + backward)",
                 "gather_reference_ms": base["median_ms"], "sampled_ms": new["median_ms"],
                 "speedup": base["median_ms"] / new["median_ms"]})
    print(rows[-1])
    recipe = recipe_rows(args.device, repeat, new["median_ms"])
    path = write_json(f"train_step_{args.device.split(':')[0]}", {
        "benchmark": "train_step", "environment": environment(args.device), "threads": args.threads,
        "baseline": "gather reference (modulated_deform_conv2d_reference), measured in the same run",
        "rows": rows, "data_baseline": "two-step decimate(blur(.)) degradation, measured in the same run",
        "data_rows": data_rows(repeat),
        "recipe_baseline": "the step before (RAFT run at zero flow, 128² crops), measured in the same run",
        "recipe_rows": recipe})
    bar_chart(f"train_step_{args.device.split(':')[0]}", "Training path: speed-up over the gather reference",
              ["DCN 16ch 128²", "DCN 32ch 64²", "DCN 48ch 32²", "whole step"],
              {"sampled / gather": [r["speedup"] for r in rows]}, "speed-up (x)")
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
