"""Restricted unpickling: ``torch.load`` of ``.pth``/``.pt`` files (zip or legacy format) without running pickled code.

The official weights come as pickled ``torch.save`` files. Pickle can run arbitrary code, so these files are never
unpickled with the stock unpickler: every global outside a small allow-list (what tensors and plain containers need)
is replaced by an inert :class:`UnknownObject` stand-in. Framework objects saved beside the weights (torchlight's
``EngineConfig`` named tuple, optimizer objects, ``argparse.Namespace``) then load as placeholders instead of failing or
running code. With ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` set, torch's own weights-only unpickler is used, with the same
placeholders registered.
"""

from __future__ import annotations

import builtins
import functools
import io
import os
import pickle
import re
import types
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import torch

from .common import PathLike

__all__ = ["UnknownObject", "safe_torch_load"]


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
