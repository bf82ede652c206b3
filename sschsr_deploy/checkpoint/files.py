"""Reading checkpoint files: the container format sniffed from the file signature, the model state dict found inside
what the file holds (torchlight engine checkpoints, common wrappers, bare state dicts), clear errors on damaged files.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sschsr_deploy.errors import CheckpointError

from .common import PathLike, _explain
from .keys import map_state_dict
from .safetensors_io import load_safetensors
from .unpickle import check_zip_records, safe_torch_load

__all__ = ["load_official_checkpoint", "read_checkpoint"]


def _sniff(path: Path) -> str:
    """Identify the container format from the file signature (extensions lie)."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: file is empty")
    with open(path, "rb") as f:
        head = f.read(512)
    if path.suffix == ".safetensors":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        _check_zip(path)
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and head[1] <= pickle.HIGHEST_PROTOCOL:
        return "legacy"
    if head[257:262] == b"ustar":  # torch's reader of this format sizes storages by a header field, unchecked
        raise CheckpointError(
            f"{path}: is a pre-0.4 PyTorch tar-format checkpoint, which is not supported: load it with an old torch "
            "and save it again with torch.save"
        )
    raise CheckpointError(
        f"{path}: not a PyTorch (.pth/.pt) or safetensors checkpoint (unrecognised file signature {head[:8]!r})"
    )


def _check_zip(path: Path) -> None:
    """Catch a cut or damaged archive with a clear message, and refuse TorchScript archives (not checkpoints)."""
    names = check_zip_records(path)
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(f"{path}: is a TorchScript archive (torch.jit.save), not a weights checkpoint")
    if not any(name.endswith("data.pkl") for name in names):
        raise CheckpointError(f"{path}: zip archive is not a torch.save checkpoint (no data.pkl record)")


def _is_tensor_dict(obj: Mapping) -> bool:
    tensors = sum(isinstance(v, torch.Tensor) for v in obj.values())
    return tensors > 0 and 2 * tensors >= len(obj)


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [str(k) for k in list(obj)[:8]]
        return f"a {type(obj).__name__} with keys {keys}"
    return f"an object of type {type(obj).__name__}"


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the model state dict inside what a checkpoint file holds (torchlight, common wrappers, or bare)."""
    candidate: Any = None
    if isinstance(obj, Mapping):
        module = obj.get("module")
        if isinstance(module, Mapping) and isinstance(module.get("model"), Mapping):
            candidate = module["model"]  # torchlight engine: {"epoch", "module": {"model", "optimizer"}, ...}
        elif _is_tensor_dict(obj):
            candidate = obj
        else:
            for key in ("state_dict", "model", "model_state_dict", "params", "net"):
                inner = obj.get(key)
                if isinstance(inner, Mapping) and _is_tensor_dict(inner):
                    candidate = inner
                    break
    if candidate is None:
        raise CheckpointError(f"{path}: contains no state dict of tensors (found {_describe(obj)})")
    sd = {k: v for k, v in candidate.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: contains no tensors (found {_describe(candidate)})")
    return sd


def read_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """Read the model weights from a ``.pth``/``.pt`` (zip or legacy) or ``.safetensors`` file, safely.

    Container wrappers (torchlight training checkpoint, ``state_dict``/``model``/``params``) are unwrapped; keys are
    returned as stored in the file (see :func:`load_official_checkpoint` for the mapping to model keys).
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    fmt = _sniff(p)
    if fmt == "safetensors":
        return load_safetensors(p)[0]
    try:
        obj = safe_torch_load(p)
    except CheckpointError:
        raise
    except Exception as exc:
        what = "zip-format" if fmt == "zip" else "legacy-format"
        raise CheckpointError(f"{p}: cannot read {what} torch checkpoint: {_explain(exc)}") from exc
    return _extract_state_dict(obj, p)


def load_official_checkpoint(path: PathLike, kind: str = "auto") -> dict[str, torch.Tensor]:
    """Read an official or own checkpoint file and return its tensors under model key names.

    Sub-network files (RAFT, warpnet, feature extractor) give partial dicts that fill part of the model.
    """
    sd = read_checkpoint(path)
    try:
        return map_state_dict(sd, kind)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
