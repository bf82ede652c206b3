"""The training command line, ``python -m sschsr_deploy.train --out DIR [--steps N ...]``: one option per
:class:`~sschsr_deploy.train.config.TrainConfig` field."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict

from .config import TrainConfig
from .stages import train

# the first line of the package docstring (not imported from it: the package imports this module)
DESCRIPTION = "Train a preset (the shipped ``tiny`` weights) on generated scenes, on the CPU, reproducibly."


def main(argv: list[str] | None = None) -> int:
    """``python -m sschsr_deploy.train --out DIR [--steps N ...]``: the command that produced the shipped weights."""
    import argparse
    import sys

    defaults = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m sschsr_deploy.train", description=DESCRIPTION)
    ap.add_argument("--out", required=True, help="run directory (weights, card, curves, resumable checkpoints)")
    for name, value in asdict(defaults).items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    ap.add_argument("--no-resume", action="store_true", help="start over even if DIR holds a checkpoint")
    args = vars(ap.parse_args(argv))
    out, no_resume = args.pop("out"), args.pop("no_resume")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    card = train(TrainConfig(**args), out, resume=not no_resume)
    print(json.dumps(card["validation"], indent=1))
    return 0
