"""The package's own checkpoint format, safetensors: writing (atomically, each shared tensor stored once and its other
names recorded in the metadata) and reading (every key given back)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sschsr_deploy.errors import CheckpointError

from .common import PathLike, _as_tensor, _explain, _same_values
from .keys import alias_partner

__all__ = ["load_safetensors", "save_safetensors"]

_ALIAS_METADATA_KEY = "sschsr_deploy.aliases"


def _storage_identity(t: torch.Tensor) -> tuple[Any, ...] | None:
    if t.numel() == 0:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _dedupe_for_safetensors(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each shared tensor once (safetensors refuses shared memory); return tensors and alias -> stored key."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    originals: dict[str, torch.Tensor] = {}
    for key, raw in sd.items():
        if not isinstance(key, str):
            raise CheckpointError(f"state dict key {key!r} is not a string")
        tensor = _as_tensor(raw)
        if tensor is None:
            raise CheckpointError(f"cannot save {key!r}: not a tensor ({type(raw).__name__})")
        if tensor.layout != torch.strided:
            raise CheckpointError(f"cannot save {key!r}: safetensors stores dense tensors only (got {tensor.layout})")
        ident = _storage_identity(tensor)
        if ident is not None and ident in seen:
            aliases[key] = seen[ident]
            continue
        partner = alias_partner(key)
        if partner in originals and _same_values(originals[partner], tensor):
            aliases[key] = aliases.get(partner, partner)
            continue
        if ident is not None:
            seen[ident] = key
        originals[key] = tensor
    # Remaining partial overlaps (views into one storage) must be materialised separately.
    storages: set[tuple[Any, int]] = set()
    for key, tensor in originals.items():
        t = tensor.to("cpu")
        sid = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if t.numel() and (
            sid in storages or not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size()
        ):
            t = t.clone(memory_format=torch.contiguous_format)
        storages.add(sid)
        tensors[key] = t
    return tensors, aliases


def save_safetensors(
    model_or_state_dict: torch.nn.Module | Mapping[str, Any], path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write weights as a safetensors file, atomically (temp file in the same directory, then ``os.replace``).

    Aliased tensors are stored once and their other names recorded in the metadata, so :func:`load_safetensors` gives
    back every key. ``metadata`` is a string -> string map (e.g. preset, bands).
    """
    from safetensors.torch import save_file

    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict
    meta: dict[str, str] = {"format": "pt"}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CheckpointError(f"safetensors metadata must map str to str, got {k!r}: {v!r}")
        if k == _ALIAS_METADATA_KEY:
            raise CheckpointError(f"metadata key {k!r} is reserved")
        meta[k] = v
    tensors, aliases = _dedupe_for_safetensors(sd)
    if not tensors:
        raise CheckpointError(f"{path}: refusing to write a checkpoint without tensors")
    if aliases:
        meta[_ALIAS_METADATA_KEY] = json.dumps(aliases, sort_keys=True)

    target = Path(path)
    if not target.parent.is_dir():
        raise CheckpointError(f"{target}: directory {target.parent} does not exist")
    from ..io.atomic import atomic_path

    try:
        with atomic_path(target) as tmp:
            save_file(tensors, os.fspath(tmp), metadata=meta)
    except Exception as exc:
        raise CheckpointError(f"{target}: writing the safetensors file failed: {exc}") from exc


def load_safetensors(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file: (state dict with alias keys restored, user metadata)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint file not found: {p}")
    try:
        with safe_open(os.fspath(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{p}: not a valid safetensors file (truncated or corrupt?): {_explain(exc)}") from exc
    raw_aliases = meta.pop(_ALIAS_METADATA_KEY, None)
    if raw_aliases is not None:
        try:
            aliases = json.loads(raw_aliases)
            for alias, stored in aliases.items():
                sd[alias] = sd[stored]
        except (ValueError, KeyError, AttributeError, TypeError) as exc:
            raise CheckpointError(f"{p}: corrupt alias table in the safetensors metadata: {exc}") from exc
    if not sd:
        raise CheckpointError(f"{p}: contains no tensors")
    return sd, meta
