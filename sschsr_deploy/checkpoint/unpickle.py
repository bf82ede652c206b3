"""Restricted unpickling: ``torch.load`` of ``.pth``/``.pt`` files (zip or legacy format) without running pickled code.

The official weights come as pickled ``torch.save`` files. Pickle can run arbitrary code, so these files are never
unpickled with the stock unpickler: every global outside a small allow-list (what tensors and plain containers need)
is replaced by an inert :class:`UnknownObject` stand-in. Framework objects saved beside the weights (torchlight's
``EngineConfig`` named tuple, optimizer objects, ``argparse.Namespace``) then load as placeholders instead of failing or
running code. With ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` set, torch's own weights-only unpickler is used, with the same
placeholders registered (after the file has passed this module's checks).

A hostile file must not be able to make the loader allocate what it likes either, nor crash the interpreter. So the
unpickler is the pure-Python one (its memo is a dict; the C unpickler sizes its memo table by an index in the file),
and everything an unpickled object can ask for is bounded by what the file can justify:

- allocations by argument (``bytearray(n)``, legacy-format storage sizes) draw on a budget of the file's own size;
  zip-format storages must match their record's size (torch checks it) and the records' sizes the archive's;
- tensors must fit inside their storage (no stride-0 views larger than the data in the file);
- classes that allocate when called (tensor and storage types) are not callable from a pickle at all;
- dict keys and set members are checked for nesting depth before anything hashes them (hashing a deeply nested
  tuple overflows the C stack: a 1 MB pickle could segfault the process), and so is MARK nesting.

Anything refused raises :class:`~sschsr_deploy.errors.CheckpointError`.
"""

from __future__ import annotations

import builtins
import contextvars
import functools
import io
import math
import operator
import os
import pickle
import re
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sschsr_deploy.errors import CheckpointError

from .common import PathLike

__all__ = ["UnknownObject", "safe_torch_load"]

#: Deepest nesting of tuples / frozensets accepted as a dict key or set member (real checkpoints: 1 or 2).
MAX_KEY_DEPTH = 32
#: Deepest MARK nesting (containers under construction at once) a pickle may use (real checkpoints: under 10).
MAX_MARK_DEPTH = 256
#: Budget for allocations by argument when no file is being loaded (direct use of the unpickler).
DEFAULT_BUDGET = 64 << 20


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


@dataclass
class _Limits:
    """What one load may allocate on the file's say-so: ``budget`` bytes (the file's size), minus what was granted."""

    budget: int
    source: str = "the checkpoint"
    granted: int = 0

    def take(self, nbytes: Any, what: str) -> None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise CheckpointError(f"{self.source}: {what} has an invalid size {nbytes!r} (corrupt or hostile file)")
        if self.granted + nbytes > self.budget:
            raise CheckpointError(
                f"{self.source}: {what} asks for {nbytes} bytes, more than the {self.budget}-byte file can hold "
                f"({self.granted} bytes already granted); the file is corrupt or hostile"
            )
        self.granted += nbytes


_LIMITS: contextvars.ContextVar[_Limits | None] = contextvars.ContextVar("sschsr_checkpoint_limits", default=None)


def _limits() -> _Limits:
    limits = _LIMITS.get()
    if limits is None:
        limits = _Limits(DEFAULT_BUDGET)
        _LIMITS.set(limits)
    return limits


def _refuse(what: str) -> CheckpointError:
    return CheckpointError(f"{_limits().source}: {what} (corrupt or hostile file)")


class _TypeRef:
    """A tensor type named in a pickle: usable as the target type of a tensor rebuild, never callable (calling
    ``torch.Tensor(n)`` or ``torch.FloatStorage(n)`` allocates ``n`` elements of the file's choosing)."""

    def __init__(self, cls: type) -> None:
        self.cls = cls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse(f"the pickle calls {self.cls.__module__}.{self.cls.__name__} directly (torch.save never does)")

    def __repr__(self) -> str:
        return f"<type reference {self.cls.__name__}>"


_SIMPLE_KEY_TYPES = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.layout)


def _check_keys(keys: Iterable[Any], memo: dict[int, tuple[Any, int]] | None = None) -> None:
    """Refuse keys (dict keys, set members) nested deeper than :data:`MAX_KEY_DEPTH` before anything hashes them.

    ``memo`` (id -> (object, height)) keeps checked tuples alive and known, so shared sub-tuples cost once."""
    memo = {} if memo is None else memo
    for key in keys:
        if isinstance(key, _SIMPLE_KEY_TYPES) or not isinstance(key, tuple | frozenset) or id(key) in memo:
            continue
        stack: list[tuple[Any, bool, int]] = [(key, False, 1)]
        while stack:
            obj, done, depth = stack.pop()
            if id(obj) in memo:
                continue
            if depth > MAX_KEY_DEPTH:
                raise _refuse(f"a dict key or set member is nested more than {MAX_KEY_DEPTH} levels deep")
            if done:
                heights = [memo[id(c)][1] for c in obj if id(c) in memo]
                memo[id(obj)] = (obj, 1 + max(heights, default=0))
                continue
            stack.append((obj, True, depth))
            stack.extend((c, False, depth + 1) for c in obj if isinstance(c, tuple | frozenset) and id(c) not in memo)


def _check_state(state: Any) -> None:
    """Attribute state set on a rebuilt tensor / parameter: ``None``, or dicts of plain (non-dunder) names."""
    parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
    for part in parts:
        if part is None:
            continue
        if not isinstance(part, dict) or not all(isinstance(k, str) and not k.startswith("__") for k in part):
            raise _refuse(f"a tensor carries invalid attribute state of type {type(part).__name__}")


def _check_fits_storage(tensor: Any) -> Any:
    """A rebuilt tensor must lie within its storage: a larger view (stride 0) would cost memory the file lacks."""
    if not isinstance(tensor, torch.Tensor):
        raise _refuse(f"a tensor rebuild gave {type(tensor).__name__}")
    if tensor.layout != torch.strided or tensor.device.type == "meta":
        return tensor
    numel = math.prod(int(d) for d in tensor.shape)
    need = numel * tensor.element_size()
    have = tensor.untyped_storage().nbytes()
    if numel and need > have:
        raise _refuse(
            f"a tensor of shape {list(tensor.shape)} needs {need} bytes but its storage holds {have} (overlapping "
            "view larger than the data in the file)"
        )
    return tensor


def _guard_rebuild(fn: Any) -> Any:
    @functools.wraps(fn)
    def rebuild(*args: Any, **kwargs: Any) -> Any:
        return _check_fits_storage(fn(*args, **kwargs))

    return rebuild


def _safe_rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    _check_state(state)
    return _check_fits_storage(torch._utils._rebuild_parameter_with_state(data, requires_grad, backward_hooks, state))


def _safe_rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2`` limited to this module's rebuild functions and tensor types."""
    if func not in _rebuild_functions().values():
        raise _refuse(f"a tensor is rebuilt with {func!r}, which is not a tensor rebuild function")
    cls = new_type.cls if isinstance(new_type, _TypeRef) else new_type
    if cls not in (torch.Tensor, torch.nn.Parameter):
        raise _refuse(f"a tensor is rebuilt as {new_type!r}, which is not a tensor type")
    if not isinstance(args, tuple):
        raise _refuse("a tensor rebuild has no argument tuple")
    _check_state(state)
    return _check_fits_storage(torch._tensor._rebuild_from_type_v2(func, cls, args, state))


def _safe_bytearray(source: Any = b"", *args: Any) -> bytearray:
    """``bytearray`` whose size argument draws on the load's budget (``bytearray(10**11)`` would allocate 100 GB)."""
    if isinstance(source, str | bytes | bytearray | list | tuple):
        return bytearray(source, *args)
    try:
        size = operator.index(source)
    except TypeError:
        raise _refuse(f"bytearray() of a {type(source).__name__}") from None
    _limits().take(size, "bytearray()")
    return bytearray(size)


_ENCODINGS = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "utf-8", "utf8", "ascii"}


def _safe_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (``bytes`` objects): text encodings only, no codec machinery."""
    if not isinstance(obj, str) or not isinstance(encoding, str) or encoding.lower() not in _ENCODINGS:
        raise _refuse(f"_codecs.encode() with encoding {encoding!r}")
    return obj.encode(encoding, errors if isinstance(errors, str) else "strict")


def _keyed(cls: type) -> Any:
    """A container constructor (dict, set, ...) whose keys are checked before it hashes them."""

    def construct(*args: Any) -> Any:
        if len(args) > 1:
            raise _refuse(f"{cls.__name__}() with {len(args)} arguments")
        if args:
            items = args[0]
            if not isinstance(items, list | tuple | dict | set | frozenset):
                raise _refuse(f"{cls.__name__}() of a {type(items).__name__}")
            if cls in (dict, OrderedDict) and not isinstance(items, dict):
                if not all(isinstance(p, tuple | list) and len(p) == 2 for p in items):
                    raise _refuse(f"{cls.__name__}() of something other than key/value pairs")
                _check_keys(p[0] for p in items)
            elif not isinstance(items, dict | set | frozenset):
                _check_keys(items)
        return cls(*args)

    construct.__name__ = cls.__name__
    return construct


_REBUILD_FUNCTIONS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter")
# Deliberately absent (they load as placeholders): torch.storage._load_from_bytes (it calls torch.load with the
# unrestricted pickle), the numpy-based rebuild (numpy objects are not allowed), _rebuild_qtensor (it allocates a tensor
# of the pickle's size before checking it against the storage) and the sparse / nested / meta / wrapper-subclass /
# device rebuilds (no weights file needs them; each allocates or converts by arguments of the file's choosing).


@functools.lru_cache(maxsize=1)
def _rebuild_functions() -> dict[str, Any]:
    fns = {name: _guard_rebuild(getattr(torch._utils, name)) for name in _REBUILD_FUNCTIONS
           if hasattr(torch._utils, name)}
    if hasattr(torch._utils, "_rebuild_parameter_with_state"):
        fns["_rebuild_parameter_with_state"] = _safe_rebuild_parameter_with_state
    return fns


# Python 2 module names that protocol-2 pickles still carry (the stock unpickler maps them inside find_class).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The allow-list: what ``torch.save`` needs to rebuild tensors, parameters, sizes and plain containers, each
    either harmless as it is or wrapped so that it cannot allocate more than the file justifies."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _keyed(OrderedDict),
        ("_codecs", "encode"): _safe_encode,  # bytes in protocol-2 pickles
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): _TypeRef(torch.Tensor),
        ("torch._tensor", "_rebuild_from_type_v2"): _safe_rebuild_from_type_v2,
        ("torch.nn.parameter", "Parameter"): _TypeRef(torch.nn.Parameter),
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("builtins", "bytearray"): _safe_bytearray,
        ("builtins", "dict"): _keyed(dict),
        ("builtins", "set"): _keyed(set),
        ("builtins", "frozenset"): _keyed(frozenset),
    }
    for name in ("list", "tuple", "complex", "slice", "int", "float", "bool", "str"):
        allowed[("builtins", name)] = getattr(builtins, name)
    for name, fn in _rebuild_functions().items():
        allowed[("torch._utils", name)] = fn
    # Tensor and storage classes (torch.FloatTensor, torch.FloatStorage, ...) are not listed: torch's own unpickler
    # resolves the storage types of persistent ids itself, and calling either kind allocates by argument.
    return allowed


def _safe_global(module: str, name: str) -> Any:
    """Resolve a pickle global: the (guarded) object if allow-listed, otherwise an inert placeholder class."""
    module = _PY2_MODULES.get(module, module)
    if module == "torch.tensor":  # pre-1.8 module path of torch._tensor
        module = "torch._tensor"
    obj = _allowed_globals().get((module, name))
    if obj is not None:
        return obj
    if module == "torch" and isinstance(name, str) and "." not in name:
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype | torch.layout | torch.memory_format | torch.qscheme):
            return value
    return _placeholder_class(f"{module}.{name}")


#: Types NEWOBJ may instantiate besides placeholders (``cls.__new__(cls, *args)`` bypasses the guarded wrappers).
_NEWOBJ_TYPES = (tuple, list, int, float, complex, str, bytes, torch.Size)


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler whose globals come only from the allow-list (the 'restricting globals' recipe of the
    pickle docs), with the opcodes that hash keys, build objects or nest containers checked (see the module doc)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._key_memo: dict[int, tuple[Any, int]] = {}
        self._storage_keys: set[str] = set()
        self._pload: Any = None

    def find_class(self, module: str, name: str) -> Any:
        return _safe_global(module, name)

    # torch installs its storage loader as ``unpickler.persistent_load = ...``: checked here before it runs.
    @property  # type: ignore[override]
    def persistent_load(self) -> Any:
        return self._persistent_load

    @persistent_load.setter
    def persistent_load(self, fn: Any) -> None:
        self._pload = fn

    def _persistent_load(self, pid: Any) -> Any:
        if self._pload is None:
            raise pickle.UnpicklingError("persistent IDs are not supported here")
        if not isinstance(pid, tuple) or not pid:
            return self._pload(pid)
        kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and len(pid) > 1:  # legacy whole-module pickles: the container type (a placeholder)
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6):
            raise _refuse(f"unknown persistent id {str(kind)[:40]!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        if not isinstance(key, str) or isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise _refuse("a storage record has an invalid key or size")
        if len(pid) == 6:  # legacy format: torch allocates numel elements here and fills them from the file later
            view = pid[5]
            if view is not None and not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                                         and all(isinstance(v, int) and v >= 0 for v in view[1:])):
                raise _refuse("a storage view record is invalid")
            if key not in self._storage_keys:
                dtype = getattr(storage_type, "dtype", None)
                if not isinstance(dtype, torch.dtype):
                    raise _refuse(f"a storage record has type {storage_type!r}")
                _limits().take(numel * torch._utils._element_size(dtype), f"storage {key!r}")
                self._storage_keys.add(key)
        return self._pload(pid)

    def load_mark(self) -> None:
        if len(self.metastack) >= MAX_MARK_DEPTH:
            raise _refuse(f"containers are nested more than {MAX_MARK_DEPTH} levels deep")
        super().load_mark()

    def load_dict(self) -> None:
        _check_keys(self.stack[0::2], self._key_memo)  # after MARK, self.stack holds the marked items
        super().load_dict()

    def load_setitem(self) -> None:
        _check_keys((self.stack[-2],), self._key_memo)
        super().load_setitem()

    def load_setitems(self) -> None:
        _check_keys(self.stack[0::2], self._key_memo)
        super().load_setitems()

    def load_additems(self) -> None:
        _check_keys(self.stack, self._key_memo)
        super().load_additems()

    def load_frozenset(self) -> None:
        _check_keys(self.stack, self._key_memo)
        super().load_frozenset()

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if not isinstance(inst, UnknownObject):  # placeholders only record their state
            parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
            for part in parts:
                if part is not None and not (isinstance(part, dict) and all(isinstance(k, str) for k in part)):
                    raise _refuse(f"BUILD of a {type(inst).__name__} with state of type {type(part).__name__}")
        super().load_build()

    def load_newobj(self) -> None:
        self._check_newobj(self.stack[-2])
        super().load_newobj()

    def load_newobj_ex(self) -> None:
        self._check_newobj(self.stack[-3])
        super().load_newobj_ex()

    @staticmethod
    def _check_newobj(cls: Any) -> None:
        if not (isinstance(cls, type) and (issubclass(cls, UnknownObject) or cls in _NEWOBJ_TYPES)):
            raise _refuse(f"NEWOBJ of {cls!r}")


for _opcode, _method in ((pickle.MARK, "load_mark"), (pickle.DICT, "load_dict"), (pickle.SETITEM, "load_setitem"),
                         (pickle.SETITEMS, "load_setitems"), (pickle.ADDITEMS, "load_additems"),
                         (pickle.FROZENSET, "load_frozenset"), (pickle.BUILD, "load_build"),
                         (pickle.NEWOBJ, "load_newobj"), (pickle.NEWOBJ_EX, "load_newobj_ex")):
    _RestrictedUnpickler.dispatch[_opcode[0]] = getattr(_RestrictedUnpickler, _method)


def _check_plain(obj: Any, what: str) -> Any:
    """The legacy format's header records (magic number, protocol, system info, storage keys) are plain values;
    torch compares and hashes them, so anything else (a deeply nested tuple) is refused first."""
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > 4:
            raise _refuse(f"the {what} record is nested too deeply")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for kv in item.items() for v in kv)
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
        elif not isinstance(item, str | bytes | int | float | type(None)):
            raise _refuse(f"the {what} record holds a {type(item).__name__}")
    return obj


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _check_plain(_RestrictedUnpickler(file, **kwargs).load(), "legacy header")


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    return _restricted_load(io.BytesIO(data), **kwargs)


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


#: How much larger than the archive its records may be once decompressed (torch.save stores them uncompressed).
MAX_ZIP_EXPANSION = 4


def check_zip_records(path: PathLike) -> list[str]:
    """The record names of a zip-format checkpoint, after refusing an archive Python's zipfile cannot read or whose
    records claim more bytes than the archive could expand to (a decompression bomb)."""
    p = Path(path)
    size = p.stat().st_size
    try:
        with zipfile.ZipFile(p) as archive:
            infos = archive.infolist()
    except Exception as exc:  # BadZipFile, EOFError, UnicodeDecodeError (names), struct.error, MemoryError, ...
        raise CheckpointError(
            f"{p}: zip-format torch checkpoint is truncated or corrupt ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]})"
        ) from None
    declared = sum(max(0, i.file_size) for i in infos)
    if declared > MAX_ZIP_EXPANSION * size + (1 << 20):
        raise CheckpointError(
            f"{p}: zip records declare {declared} bytes, more than a {size}-byte archive can hold (corrupt or hostile "
            "file)"
        )
    return [i.filename for i in infos]


def safe_torch_load(path: PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` a ``.pth``/``.pt`` file (zip or legacy format) without executing pickled code.

    Unknown globals become :class:`UnknownObject` placeholders; allocations are bounded by the file (module doc).
    When ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` is set, torch's own weights-only unpickler is used instead, with the
    checkpoint's unknown globals registered as placeholders, once the file has passed this module's checks.
    Raises :class:`CheckpointError` for what the checks refuse and whatever torch raises on a corrupt file;
    :func:`read_checkpoint` turns the latter into :class:`CheckpointError` too.
    """
    p = Path(path)
    with open(p, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        check_zip_records(p)
    token = _LIMITS.set(_Limits(p.stat().st_size, str(p)))
    try:
        if _weights_only_forced():
            _validate_pickles(p, is_zip)
            return _weights_only_load_with_placeholders(p, map_location)
        # A legacy file is read from memory: torch then never tries its pre-0.4 tar reader, which sizes storages by
        # a header field of the file's choosing.
        source: Any = os.fspath(p) if is_zip else io.BytesIO(p.read_bytes())
        return torch.load(source, map_location=map_location, pickle_module=_RESTRICTED_PICKLE, weights_only=False)
    finally:
        _LIMITS.reset(token)


class _ValidatingUnpickler(_RestrictedUnpickler):
    """Runs a checkpoint's pickles through every check of :class:`_RestrictedUnpickler` without building tensors:
    storages and tensor rebuilds become placeholders. Used before handing a file to torch's weights-only loader."""

    def find_class(self, module: str, name: str) -> Any:
        if isinstance(name, str) and "Storage" in name:
            try:
                return torch.serialization.StorageType(name)
            except (KeyError, AttributeError):
                pass
        obj = super().find_class(module, name)
        if obj in _rebuild_functions().values() or obj is _safe_rebuild_from_type_v2:
            return _placeholder_class(f"{module}.{name}")
        return obj


def _validate_pickles(p: Path, is_zip: bool) -> None:
    """The checks of a restricted load, for a file torch's weights-only unpickler will read (its hashing of keys and
    its storage allocations are not bounded)."""
    if is_zip:
        with zipfile.ZipFile(p) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not names:
                return  # not a torch.save archive: torch's loader says so
            data = archive.read(names[0])
        unpickler = _ValidatingUnpickler(io.BytesIO(data), encoding="utf-8")
        unpickler.persistent_load = lambda pid: UnknownObject(pid)
        unpickler.load()
        return
    f = io.BytesIO(p.read_bytes())
    for _ in range(3):  # magic number, protocol version, system info
        _restricted_load(f, encoding="utf-8")
    unpickler = _ValidatingUnpickler(f, encoding="utf-8")
    unpickler.persistent_load = lambda pid: UnknownObject(pid)
    unpickler.load()
    _restricted_load(f, encoding="utf-8")  # storage keys


def _weights_only_load_with_placeholders(path: PathLike, map_location: Any) -> Any:
    try:
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path))
    except ValueError:  # legacy (non-zip) format: torch's weights-only loader on its own
        unknown = []
    stubs = [(_placeholder_class(name), name) for name in unknown]
    with torch.serialization.safe_globals(stubs):
        return torch.load(os.fspath(path), map_location=map_location, weights_only=True)
