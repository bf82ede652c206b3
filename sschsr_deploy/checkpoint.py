"""Safe loading and saving of SSC-HSR checkpoints: restricted unpickling, official layouts, key aliases, safetensors.

The official weights come as pickled ``torch.save`` files. Pickle can run arbitrary code, so these files are never
unpickled with the stock unpickler: every global outside a small allow-list (what tensors and plain containers need)
is replaced by an inert :class:`UnknownObject` stand-in. Framework objects saved beside the weights (torchlight's
``EngineConfig`` named tuple, optimizer objects, ``argparse.Namespace``) then load as placeholders instead of failing or
running code.

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

Public API: :func:`safe_torch_load`, :func:`read_checkpoint`, :func:`map_state_dict`, :func:`load_official_checkpoint`,
:func:`load_into` (+ :class:`LoadReport`), :func:`save_safetensors`, :func:`load_safetensors`.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import io
import json
import os
import pickle
import re
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sschsr_deploy.errors import CheckpointError

__all__ = [
    "KINDS",
    "LoadReport",
    "UnknownObject",
    "alias_partner",
    "load_into",
    "load_official_checkpoint",
    "load_safetensors",
    "map_state_dict",
    "official_aliases",
    "official_keys",
    "read_checkpoint",
    "safe_torch_load",
    "save_safetensors",
]

PathLike = str | os.PathLike

#: Layout names accepted by :func:`load_official_checkpoint` / :func:`map_state_dict` (``auto`` detects).
KINDS = ("auto", "model", "raft", "warpnet", "feature_extraction")

#: Top-level submodules of the official model, in constructor order.
OFFICIAL_TOP_LEVEL = ("flownet", "warpnet", "hsi_encoder", "decoder", "rgb_extractor", "similar")

_RAFT_TOP = frozenset({"fnet", "cnet", "update_block"})
_EXTRACTOR_TOP = frozenset({"feature_extraction_image1", "feature_extraction_image2"})
_STRIPPABLE_PREFIXES = ("module.", "model.")
_ALIAS_METADATA_KEY = "sschsr_deploy.aliases"
_SHOW = 5  # keys listed per problem kind in messages

# ---------------------------------------------------------------------------------------------------------------------
# Restricted unpickling
# ---------------------------------------------------------------------------------------------------------------------


class UnknownObject:
    """Inert stand-in for a pickled global that is not on the allow-list.

    It accepts any constructor arguments, ``__setstate__``, item assignment and appends (all the ways pickle feeds an
    object) and only records them, so loading never executes code from the file. ``_sschsr_global`` names the global.
    """

    _sschsr_global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> UnknownObject:
        obj = object.__new__(cls)
        obj._sschsr_args = args
        obj._sschsr_state = None
        obj._sschsr_items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._sschsr_state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self._sschsr_items.append((key, value))

    def append(self, item: Any) -> None:
        self._sschsr_items.append(item)

    def extend(self, items: Iterable[Any]) -> None:
        self._sschsr_items.extend(items)

    def __call__(self, *args: Any, **kwargs: Any) -> UnknownObject:
        # A placeholder used as a callable (e.g. the result of a blocked getattr) yields another placeholder.
        return _placeholder_class(f"{self._sschsr_global}()")(*args)

    def __repr__(self) -> str:
        return f"<UnknownObject {self._sschsr_global}>"


_PLACEHOLDER_CLASSES: dict[str, type[UnknownObject]] = {}


def _placeholder_class(full_name: str) -> type[UnknownObject]:
    """One placeholder subclass per blocked global, so equal names map to the same class (pickle memo semantics)."""
    cls = _PLACEHOLDER_CLASSES.get(full_name)
    if cls is None:
        short = re.sub(r"\W", "_", full_name.rsplit(".", 1)[-1]) or "Unknown"
        cls = type(short, (UnknownObject,), {"_sschsr_global": full_name, "__module__": __name__})
        cls = _PLACEHOLDER_CLASSES.setdefault(full_name, cls)
    return cls


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Replacement for ``copyreg._reconstructor`` (protocol 0/1 objects): only ever builds placeholders."""
    if isinstance(cls, type) and issubclass(cls, UnknownObject):
        return cls(state)
    return _placeholder_class("copyreg._reconstructor")(cls, base, state)


_REBUILD_FUNCTIONS = (
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_nested_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_cpu_tensor",
    # Deliberately absent: torch.storage._load_from_bytes (it calls torch.load with the unrestricted pickle) and the
    # numpy-based rebuild function (numpy objects are not allowed).
)

# Python 2 module names that protocol-2 pickles still carry (the stock unpickler maps them inside find_class).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The allow-list: what ``torch.save`` needs to rebuild tensors, parameters, sizes and plain containers."""
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _codecs.encode,  # bytes in protocol-2 pickles
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("torch", "UntypedStorage"): torch.UntypedStorage,
        ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
        ("torch.storage", "TypedStorage"): torch.storage.TypedStorage,
    }
    for name in (
        "dict",
        "list",
        "tuple",
        "set",
        "frozenset",
        "bytearray",
        "complex",
        "slice",
        "int",
        "float",
        "bool",
        "str",
    ):
        allowed[("builtins", name)] = getattr(builtins, name)
    for name in _REBUILD_FUNCTIONS:
        fn = getattr(torch._utils, name, None)
        if fn is not None:
            allowed[("torch._utils", name)] = fn
    for cls in tuple(getattr(torch, "_storage_classes", ())) + tuple(getattr(torch, "_tensor_classes", ())):
        allowed[(cls.__module__, cls.__name__)] = cls
    return allowed


def _safe_global(module: str, name: str) -> Any:
    """Resolve a pickle global: the real object if allow-listed, otherwise an inert placeholder class."""
    module = _PY2_MODULES.get(module, module)
    if module == "torch.tensor":  # pre-1.8 module path of torch._tensor
        module = "torch._tensor"
    obj = _allowed_globals().get((module, name))
    if obj is not None:
        return obj
    if module == "torch" and "." not in name:
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype | torch.layout | torch.memory_format | torch.qscheme):
            return value
    return _placeholder_class(f"{module}.{name}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from the allow-list (the 'restricting globals' recipe of the pickle docs)."""

    def find_class(self, module: str, name: str) -> Any:
        return _safe_global(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# torch.load(pickle_module=...) uses `.Unpickler` (zip and legacy formats) and `.load` (legacy header records). torch
# subclasses our Unpickler, resolves storage types itself and installs its own persistent_load, so storages still load.
_RESTRICTED_PICKLE = types.ModuleType("sschsr_deploy.checkpoint.restricted_pickle")
_RESTRICTED_PICKLE.Unpickler = _RestrictedUnpickler
_RESTRICTED_PICKLE.load = _restricted_load
_RESTRICTED_PICKLE.loads = _restricted_loads
_RESTRICTED_PICKLE.UnpicklingError = pickle.UnpicklingError


def _weights_only_forced() -> bool:
    # Same test as torch.load: with this variable set, torch refuses any explicit pickle_module.
    return os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true")


def safe_torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` a ``.pth``/``.pt`` file (zip or legacy format) without executing pickled code.

    Unknown globals become :class:`UnknownObject` placeholders. When ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` is set, torch's
    own weights-only unpickler is used instead, with the checkpoint's unknown globals registered as placeholders.
    Raises whatever torch raises on a corrupt file; :func:`read_checkpoint` turns that into :class:`CheckpointError`.
    """
    if _weights_only_forced():
        return _weights_only_load_with_placeholders(path, map_location)
    return torch.load(os.fspath(path), map_location=map_location, pickle_module=_RESTRICTED_PICKLE, weights_only=False)


def _weights_only_load_with_placeholders(path: PathLike, map_location: Any) -> Any:
    try:
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path))
    except ValueError:  # legacy (non-zip) format: torch's weights-only loader on its own
        unknown = []
    stubs = [(_placeholder_class(name), name) for name in unknown]
    with torch.serialization.safe_globals(stubs):
        return torch.load(os.fspath(path), map_location=map_location, weights_only=True)


# ---------------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------------


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
    if head[257:262] == b"ustar":
        return "legacy"  # pre-0.4 tar format, handled by torch's legacy loader
    raise CheckpointError(
        f"{path}: not a PyTorch (.pth/.pt) or safetensors checkpoint (unrecognised file signature {head[:8]!r})"
    )


def _check_zip(path: Path) -> None:
    """Catch a cut or damaged archive with a clear message, and refuse TorchScript archives (not checkpoints)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: zip-format torch checkpoint is truncated or corrupt ({exc})") from exc
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


_TRUNCATION_HINTS = (
    "PytorchStreamReader",
    "zip archive",
    "central directory",
    "Ran out of input",
    "truncated",
    "unexpected end",
    "EOF",
)


def _explain(exc: BaseException) -> str:
    """One line saying what went wrong; torch's own messages can run to a page."""
    message = str(exc).strip()
    if "WeightsUnpickler error:" in message:  # torch's weights-only loader buries the cause after a long preamble
        message = message.split("WeightsUnpickler error:", 1)[1].strip()
    text = message.splitlines()[0] if message else ""
    text = text if len(text) <= 240 else text[:240] + "..."
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, EOFError) or any(h in str(exc) for h in _TRUNCATION_HINTS):
        return f"the file is truncated or corrupt ({detail})"
    return detail


# ---------------------------------------------------------------------------------------------------------------------
# Key layouts and aliases
# ---------------------------------------------------------------------------------------------------------------------


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


def load_official_checkpoint(path: PathLike, kind: str = "auto") -> dict[str, torch.Tensor]:
    """Read an official or own checkpoint file and return its tensors under model key names.

    Sub-network files (RAFT, warpnet, feature extractor) give partial dicts that fill part of the model.
    """
    sd = read_checkpoint(path)
    try:
        return map_state_dict(sd, kind)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------------------------------


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


def _first(items: list[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a is b:
        return True
    if a.shape != b.shape:
        return False
    if a.dtype != b.dtype:
        b = b.to(a.dtype)
    if a.device != b.device:
        b = b.to(a.device)
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a, b) or torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return bool(torch.equal(a, b))


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


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return None


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
    try:
        with torch.no_grad():
            model.load_state_dict(to_load, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"copying checkpoint values into the model failed: {exc}") from exc
    return report


# ---------------------------------------------------------------------------------------------------------------------
# Own format: safetensors
# ---------------------------------------------------------------------------------------------------------------------


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
    from .io.atomic import atomic_path

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
