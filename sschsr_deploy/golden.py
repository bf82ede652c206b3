"""Deterministic weights of the golden parity fixtures, generated from the state-dict key names.

An independent implementation of the rule described in ``reference/golden/README.md`` §1 (seeded per key by
crc32(canonical key) XOR base seed, PCG64, values by key suffix and rank, two damping gains, correlated correspondence
extractors). It lets anyone rebuild the exact weights the official model ran with when the fixtures were recorded, so
that a re-implementation can be checked without a trained checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
_GAINED = ("flownet.update_block.flow_head.conv2", "warpnet.block.conv6")  # ×0.1 on weight and bias
_GAIN = 0.1
_EXTRACTOR_1 = "rgb_extractor.feature_extraction_image1.model."
_EXTRACTOR_2 = "rgb_extractor.feature_extraction_image2.model."
_MIX = 0.9


def official_manifest() -> list[dict]:
    """The official state-dict manifest shipped with the package: [{key, shape, dtype, kind, alias_of?}, …]."""
    path = Path(__file__).parent / "resources" / "official_state_dict_manifest.json"
    return json.loads(path.read_text())["whole_model_state_dict"]


def canonical_key(key: str) -> str:
    """RAFT context-encoder shortcut norms are the same module as the block's norm3: generate them from that name."""
    if key.startswith("flownet.cnet.") and ".downsample.1." in key:
        return key.replace(".downsample.1.", ".norm3.")
    return key


def _base(key: str, shape: tuple[int, ...], base_seed: int) -> np.ndarray:
    ck = canonical_key(key)
    rng = np.random.default_rng((zlib.crc32(ck.encode("utf-8")) ^ base_seed) & 0xFFFFFFFF)
    module, _, last = ck.rpartition(".")
    gain = _GAIN if module in _GAINED else 1.0
    if last == "running_mean":
        return 0.1 * rng.standard_normal(shape)
    if last == "running_var":
        return rng.uniform(0.5, 1.5, shape)
    if last == "temperature":
        return 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
    if last in _IMAGENET and shape == (1, 3, 1, 1):
        return np.asarray(_IMAGENET[last], dtype=np.float64).reshape(shape)
    if len(shape) >= 2:
        return rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:])) * gain
    if len(shape) == 1 and last == "weight":
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if len(shape) == 1 and last == "bias":
        return 0.1 * rng.standard_normal(shape) * gain
    raise ValueError(f"the golden weight rule has no case for {key!r} with shape {shape}")


def golden_weight(key: str, shape: Iterable[int], dtype: str = "float32", base_seed: int = 0) -> np.ndarray:
    """Value of one state-dict entry under the rule."""
    shape = tuple(int(s) for s in shape)
    dt = np.dtype(dtype.replace("torch.", ""))
    if dt.kind in "iub":
        return np.zeros(shape, dtype=dt)
    v = _base(key, shape, base_seed)
    if key.startswith(_EXTRACTOR_2):
        partner = _base(_EXTRACTOR_1 + key[len(_EXTRACTOR_2):], shape, base_seed)
        v = _MIX * partner + math.sqrt(1.0 - _MIX**2) * v
    return v.astype(dt)


def golden_state_dict(base_seed: int = 0, entries: list[dict] | None = None) -> dict[str, np.ndarray]:
    """All entries of the manifest (official key order), as numpy arrays."""
    entries = official_manifest() if entries is None else entries
    return {e["key"]: golden_weight(e["key"], e["shape"], e["dtype"], base_seed) for e in entries}


def state_dict_sha256(sd: dict[str, np.ndarray]) -> str:
    """Checksum of the fixtures' manifest: key bytes then raw little-endian array bytes, in order."""
    h = hashlib.sha256()
    for k, v in sd.items():
        h.update(k.encode("utf-8"))
        h.update(np.ascontiguousarray(v).astype(v.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()
