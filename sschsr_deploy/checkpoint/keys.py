"""Key layouts and aliases: the official checkpoints' key names mapped to the model's, and the keys that name one
tensor twice.

Official files and the keys they hold (facts from the official repository BITYKZhang/SSC-HSR, commit c7ce1e3,
``source/model/refsr/SSCHSR/arch.py`` and ``source/module/refsr.py``; see also the architecture spec, §3.1, §6, §7.3):

* training checkpoint of the torchlight engine (``ckpt/model-best.pth``): ``{"epoch", "module": {"model": state_dict,
  "optimizer": ...}, "monitor", "config"}``; the model keys are exactly ours;
* ``raft-things.pth`` / ``sf{r}/50000_raft-rgb-sf{r}.pth``: RAFT state dict saved from ``DataParallel``
  (``module.fnet...``, ``module.cnet...``, ``module.update_block...``) -> ``flownet.*``;
* ``sf8/warpnet-sf8.pth``: a torchlight training checkpoint whose ``module.model`` holds ``warpnet.*`` keys (kept) and
  ``flownet.*`` keys (dropped by the official loader, and here too);
* ``feature_extraction.pth`` (C2-Matching / DATSR contrastive extractor): a bare state dict of ``ContrasExtractorSep``
  (``feature_extraction_image{1,2}.model.conv*`` and ``.mean`` / ``.std``), loaded strictly, an optional ``module.``
  prefix stripped -> ``rgb_extractor.*``.

RAFT's context encoder registers one module under two names (``norm3`` == ``downsample.1``): :func:`alias_partner`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from sschsr_deploy.errors import CheckpointError

from .common import _SHOW

__all__ = ["KINDS", "OFFICIAL_TOP_LEVEL", "alias_partner", "map_state_dict", "official_aliases", "official_keys"]

#: Layout names accepted by :func:`load_official_checkpoint` / :func:`map_state_dict` (``auto`` detects).
KINDS = ("auto", "model", "raft", "warpnet", "feature_extraction")

#: Top-level submodules of the official model, in constructor order.
OFFICIAL_TOP_LEVEL = ("flownet", "warpnet", "hsi_encoder", "decoder", "rgb_extractor", "similar")

_RAFT_TOP = frozenset({"fnet", "cnet", "update_block"})
_EXTRACTOR_TOP = frozenset({"feature_extraction_image1", "feature_extraction_image2"})
_STRIPPABLE_PREFIXES = ("module.", "model.")


@functools.lru_cache(maxsize=1)
def _manifest() -> tuple[dict[str, Any], ...]:
    text = resources.files("sschsr_deploy").joinpath("resources/official_state_dict_manifest.json").read_text()
    return tuple(json.loads(text)["whole_model_state_dict"])


@functools.lru_cache(maxsize=1)
def official_keys() -> frozenset[str]:
    """All 585 state-dict keys of the official model (alias keys included), from the packaged manifest."""
    return frozenset(entry["key"] for entry in _manifest())


@functools.lru_cache(maxsize=1)
def official_aliases() -> dict[str, str]:
    """Alias key -> canonical key (``flownet.cnet.layerX.0.downsample.1.*`` -> ``...norm3.*``), from the manifest."""
    return {entry["key"]: entry["alias_of"] for entry in _manifest() if entry.get("alias_of")}


_ALIAS_RE = re.compile(r"^(flownet\.cnet\.layer\d+\.\d+\.)(downsample\.1|norm3)\.([^.]+)$")


def alias_partner(key: str) -> str | None:
    """The other name of a key whose module RAFT's context encoder registers twice (norm3 == downsample.1)."""
    m = _ALIAS_RE.match(key)
    if m is None:
        return None
    other = "norm3" if m.group(2) == "downsample.1" else "downsample.1"
    return f"{m.group(1)}{other}.{m.group(3)}"


def _strip_common_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.`` from DataParallel, ``model.``) shared by every key."""
    out = dict(sd)
    changed = True
    while changed and out:
        changed = False
        for prefix in _STRIPPABLE_PREFIXES:
            if all(k.startswith(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    return out


def _with_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k if k.startswith(prefix) else prefix + k: v for k, v in sd.items()}


def _top_levels(keys: Iterable[str]) -> set[str]:
    return {k.split(".", 1)[0] for k in keys}


def _detect_layout(keys: Iterable[str]) -> str:
    tops = _top_levels(keys)
    if tops <= _RAFT_TOP:
        return "raft"
    if tops <= _EXTRACTOR_TOP:
        return "feature_extraction"
    if tops == {"block"} or tops == {"flownet", "warpnet"}:
        return "warpnet"
    if tops <= set(OFFICIAL_TOP_LEVEL):
        return "model"
    shown = sorted(tops)[:8]
    raise CheckpointError(
        f"unknown checkpoint layout: top-level key prefixes {shown} match neither the full model "
        f"({', '.join(OFFICIAL_TOP_LEVEL)}) nor RAFT (fnet/cnet/update_block), warpnet or the feature extractor "
        "(feature_extraction_image1/2)"
    )


def map_state_dict(sd: Mapping[str, Any], kind: str = "auto") -> dict[str, Any]:
    """Rename the keys of an official (sub-)network state dict to model keys; ``kind`` is one of :data:`KINDS`.

    ``raft`` adds ``flownet.``; ``feature_extraction`` adds ``rgb_extractor.``; ``warpnet`` keeps ``warpnet.*`` (or
    prefixes bare UNet ``block.*`` keys) and drops ``flownet.*`` as the official loader does; ``model`` keeps keys.
    A shared ``module.`` / ``model.`` prefix is always stripped first.
    """
    if kind not in KINDS:
        raise CheckpointError(f"unknown checkpoint kind {kind!r}; expected one of {KINDS}")
    sd = _strip_common_prefixes(sd)
    if kind == "auto":
        kind = _detect_layout(sd)
    if kind == "raft":
        out = _with_prefix(sd, "flownet.")
    elif kind == "feature_extraction":
        out = _with_prefix(sd, "rgb_extractor.")
    elif kind == "warpnet":
        out = _with_prefix({k: v for k, v in sd.items() if not k.startswith("flownet.")}, "warpnet.")
    else:
        out = dict(sd)
    if out and not any(k in official_keys() for k in out):
        sample = sorted(out)[:_SHOW]
        raise CheckpointError(f"unknown checkpoint layout: no key matches the official model (as {kind!r}: {sample})")
    return out
