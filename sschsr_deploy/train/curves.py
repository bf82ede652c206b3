"""The PNG of a run's training curves: stage-0 flow loss, stage-1 InfoNCE, stage-2/3 loss and validation PSNR."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path

log = logging.getLogger(__name__)

def plot_curves(history: dict, path: str | Path, final_from: int | None = None) -> Path | None:
    """Training loss and validation PSNR against step (PNG; skipped with a log line if matplotlib is missing);
    ``final_from`` marks where stage 3 starts."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no curves plot")
        return None
    has_flow = bool(history.get("raft_loss"))
    fig, axes = plt.subplots(1, 4 if has_flow else 3, figsize=(20 if has_flow else 15, 3.6))
    if has_flow:
        r, axes = axes[0], axes[1:]
        rl = np.asarray(history["raft_loss"])
        kr = max(1, len(rl) // 50)
        r.plot(history["raft_step"], rl, alpha=0.3, label="flow L1 (px, training pairs)")
        r.plot(np.asarray(history["raft_step"])[kr - 1:], np.convolve(rl, np.ones(kr) / kr, mode="valid"),
               label=f"mean of {kr}")
        r.plot(history["raft_val_step"], history["raft_val_epe"], "o-", label="held-out EPE (px)")
        r.set_xlabel("stage-0 step")
        r.set_title("stage 0: RAFT")
        r.legend()
    f, a, b = axes
    if history.get("match_loss"):
        ml = np.asarray(history["match_loss"])
        km = max(1, len(ml) // 50)
        f.plot(history["match_step"], ml, alpha=0.3, label="InfoNCE")
        f.plot(np.asarray(history["match_step"])[km - 1:], np.convolve(ml, np.ones(km) / km, mode="valid"),
               label=f"mean of {km}")
        f.legend()
    f.set_xlabel("stage-1 step")
    f.set_title("stage 1: correspondence extractors")
    steps = np.asarray(history["step"])
    loss = np.asarray(history["loss_cube"])
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    a.plot(steps, loss, alpha=0.3, label="cube L1")
    a.plot(steps[k - 1:], smooth, label=f"cube L1 (mean of {k})")
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_title("stage 2: whole-network loss" if final_from is None else "stages 2-3: whole-network loss")
    a.legend()
    b.plot(history["val_step"], history["val_psnr_model"], "o-", label="tiny model")
    b.plot(history["val_step"], history["val_psnr_bicubic"], "--", label="bicubic")
    if final_from is not None:
        for ax in (a, b):
            ax.axvline(final_from, color="grey", linestyle=":", label="stage 3 (larger crops)")
    b.set_xlabel("step")
    b.set_ylabel("PSNR (dB)")
    b.set_title("held-out validation")
    b.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
