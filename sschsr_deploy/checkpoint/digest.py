"""The SHA-256 name of a set of weights, computed from the tensors (not the file), so every format agrees on it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["state_dict_sha256"]


def state_dict_sha256(model_or_state_dict: torch.nn.Module | Mapping[str, Any]) -> str:
    """SHA-256 over a state dict (sorted keys, dtype, raw bytes): the one name for a set of weights.

    ONNX metadata, engine sidecars and runtime output sidecars all use it, so they identify the same weights alike.
    """
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) else model_or_state_dict
    h = hashlib.sha256()
    for key, value in sorted(sd.items()):
        h.update(key.encode())
        t = torch.as_tensor(value).detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
