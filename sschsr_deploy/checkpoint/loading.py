"""Loading a state dict (or a checkpoint file) into a model: either name of aliased modules accepted, shapes checked
before anything is copied, and a :class:`LoadReport` of what was loaded and what did not fit."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sschsr_deploy.errors import CheckpointError

from .common import _SHOW, PathLike, _as_tensor, _same_values
from .files import load_official_checkpoint
from .keys import _strip_common_prefixes, _with_prefix, alias_partner

__all__ = ["LoadReport", "check_finite", "load_into"]


@dataclass
class LoadReport:
    """What :func:`load_into` did: keys loaded, and the problems found (empty lists when the checkpoint fits)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: (key, shape in the model, shape in the checkpoint)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    #: model keys filled from their alias (only the other name of the shared module was in the checkpoint)
    filled_from_alias: list[str] = field(default_factory=list)
    #: ``num_batches_tracked`` buffers absent from the checkpoint, left at the model's value (inference ignores them)
    defaulted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self, limit: int = _SHOW) -> str:
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} missing: {_first(self.missing, limit)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected: {_first(self.unexpected, limit)}")
        if self.mismatched:
            items = [f"{k} (model {list(m)}, checkpoint {list(c)})" for k, m, c in self.mismatched]
            lines.append(f"{len(self.mismatched)} shape-mismatched: {_first(items, limit)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        head = (
            f"LoadReport: {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} shape-mismatched, "
            f"{len(self.filled_from_alias)} filled from alias, "
            f"{len(self.defaulted)} defaulted"
        )
        details = self.problems()
        return f"{head}\n{details}" if details else head


def check_finite(sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Refuse weights holding NaN or infinity: they make every output NaN, which would otherwise only show as a
    warning about the output. The message counts the values and names the first tensors holding them."""
    bad: list[tuple[str, int]] = []
    for key, tensor in sd.items():
        if isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex()):
            count = int(tensor.numel() - torch.isfinite(tensor).sum())
            if count:
                bad.append((key, count))
    if bad:
        total = sum(c for _, c in bad)
        names = _first([f"{k} ({c})" for k, c in bad], _SHOW)
        raise CheckpointError(
            f"{source} holds {total} non-finite weight values (NaN or infinity) in {len(bad)} tensors: {names}; "
            "the weights are corrupt (a diverged training run or a damaged file): use another checkpoint"
        )


def _first(items: list[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def _alias_groups(model_entries: Mapping[str, torch.Tensor], ckpt_keys: Iterable[str]) -> dict[str, list[str]]:
    """Group keys that name one tensor: modules registered twice in the model, and the official norm3/downsample.1."""
    uf = _UnionFind()
    by_id: dict[int, str] = {}
    for key, tensor in model_entries.items():
        uf.find(key)
        first = by_id.setdefault(id(tensor), key)
        if first != key:
            uf.union(first, key)
    for key in list(model_entries) + list(ckpt_keys):
        partner = alias_partner(key)
        if partner is not None:
            uf.union(key, partner)
    groups: dict[str, list[str]] = {}
    for key in list(uf.parent):
        groups.setdefault(uf.find(key), []).append(key)
    return {k: members for members in groups.values() for k in members}


def _normalize_for_model(sd: Mapping[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """Strip wrapper prefixes, then pick the sub-network prefix (if any) under which most keys match the model."""
    sd = _strip_common_prefixes(sd)

    def score(d: Mapping[str, Any]) -> int:
        return sum(1 for k in d if k in model_keys or (alias_partner(k) or "") in model_keys)

    best, best_score = sd, score(sd)
    for prefix in ("flownet.", "rgb_extractor.", "warpnet."):
        candidate = _with_prefix(sd, prefix)
        s = score(candidate)
        if s > best_score:
            best, best_score = candidate, s
    return best


def load_into(model: torch.nn.Module, sd: Mapping[str, Any] | PathLike, strict: bool = True) -> LoadReport:
    """Copy a state dict (or a checkpoint file) into ``model``, accepting either name of aliased modules.

    Shapes are checked before anything is copied. With ``strict=True`` any missing, unexpected or shape-mismatched
    key raises :class:`CheckpointError` and the model is left untouched; with ``strict=False`` what matches is loaded
    and the rest is reported. Two different values for one aliased tensor always raise.
    """
    if isinstance(sd, str | os.PathLike):
        sd = load_official_checkpoint(sd)
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"expected a state dict (mapping of key to tensor), got {type(sd).__name__}")
    bad_keys = [k for k in sd if not isinstance(k, str)]
    if bad_keys:
        raise CheckpointError(f"state dict keys must be strings, got {bad_keys[:_SHOW]!r}")

    entries = model.state_dict(keep_vars=True)
    model_keys = set(entries)
    ckpt = _normalize_for_model(sd, model_keys)
    groups = _alias_groups(entries, ckpt)
    report = LoadReport()

    provided: dict[str, torch.Tensor] = {}
    for key, raw in ckpt.items():
        tensor = _as_tensor(raw)
        if tensor is None:
            report.unexpected.append(f"{key} (not a tensor: {type(raw).__name__})")
        else:
            provided[key] = tensor

    # Resolve each alias group once: all names given must agree, and every model name in the group gets the value.
    values: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    consumed: set[str] = set()
    for key in provided:
        if key in consumed or key in sources:
            continue
        members = groups.get(key, [key])
        present = [m for m in members if m in provided]
        for other in present[1:]:
            if not _same_values(provided[present[0]], provided[other]):
                raise CheckpointError(
                    f"conflicting values for aliased keys {present[0]!r} and {other!r}: they name the same module "
                    "(RAFT context encoder norm3 == downsample.1) but differ in the checkpoint"
                )
        in_model = [m for m in members if m in model_keys]
        for member in in_model:
            sources[member] = member if member in provided else present[0]
            values[member] = provided[sources[member]]
        if in_model:
            consumed.update(present)

    to_load: dict[str, torch.Tensor] = {}
    for key, target in entries.items():
        if key not in values:
            if key.endswith("num_batches_tracked"):
                report.defaulted.append(key)
            else:
                report.missing.append(key)
            continue
        value = values[key]
        if tuple(value.shape) != tuple(target.shape):
            if key.endswith("num_batches_tracked") and value.numel() == 1 == target.numel():
                value = value.reshape(target.shape)
            else:
                report.mismatched.append((key, tuple(target.shape), tuple(value.shape)))
                continue
        to_load[key] = value
        if sources[key] != key:
            report.filled_from_alias.append(key)
    report.unexpected.extend(k for k in provided if k not in consumed)
    report.loaded = sorted(to_load)

    if strict and not report.ok:
        raise CheckpointError(f"checkpoint does not match the model:\n{report.problems()}")
    check_finite(to_load)
    try:
        with torch.no_grad():
            model.load_state_dict(to_load, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"copying checkpoint values into the model failed: {exc}") from exc
    return report
