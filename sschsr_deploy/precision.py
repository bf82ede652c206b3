"""The one reduced-precision policy: which parts of the network stay float32, for eager autocast and the fp16 export.

The network runs its convolutions in float16 / bfloat16 and keeps **float32 islands** where 16 bits lose what matters:
offsets of tens of pixels and the patch-matching arg-max lose sub-pixel precision, norms / Gram matrices / softmax
overflow or cancel, RAFT's correlation and its coordinate accumulation over the iterations drift. The islands are
marked where they are written, and the marks are the only list:

- :func:`float32_island` on a function (the three operators' entry points, the bilinear warps);
- :func:`float32_module` on a module class (the decoder's layer norm, RAFT's instance and batch norms, the
  deformable aggregations, RAFT as a whole);
- :func:`reduced_precision_module` on a module class inside an island that should run in the reduced precision again
  (RAFT's feature and context encoders and its update block: the convolutions are the cost; the deformable
  aggregations' offset / mask predictor convolutions, whose outputs enter through a bounded ``tanh`` and a sigmoid).

Two modes read the marks:

- **Eager autocast** (``torch.autocast``, the torch backend's ``half=``): an island casts floating arguments up and
  runs with autocast off (its plain-PyTorch ops would otherwise be lowered again); its results are float32. A reduced
  region inside an island turns autocast back on with the outer dtype; its results are float32.
- **Export** (:func:`export_islands` around tracing a model converted by :func:`convert_for_export`): parameters
  follow the marks (float32 in islands, the low dtype elsewhere), an island casts floating arguments up and its results
  back to its input's dtype (``out_like``), a reduced region casts its arguments down and its results up to float32.
  The trace then holds Cast nodes around float32 subgraphs.

Outside both modes every marked function and module runs unchanged (float32 eager inference pays one dtype check).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = [
    "PRECISION_ATTR",
    "convert_for_export",
    "export_islands",
    "export_islands_active",
    "float32_island",
    "float32_module",
    "module_precision",
    "reduced_precision_module",
]

PRECISION_ATTR = "sschsr_precision"  # class attribute set by the module marks: "float32" | "reduced"
_ModuleT = TypeVar("_ModuleT", bound=type[nn.Module])

# the low dtype while tracing an export (None: not exporting)
_EXPORT_DTYPE: contextvars.ContextVar[torch.dtype | None] = contextvars.ContextVar("sschsr_export_dtype",
                                                                                   default=None)
# (device type, dtype) of the autocast an enclosing island switched off, for the reduced regions inside it
_OUTER_AUTOCAST: contextvars.ContextVar[tuple[str, torch.dtype] | None] = contextvars.ContextVar(
    "sschsr_outer_autocast", default=None)
# the same while torch.compile traces: Dynamo cannot trace ContextVar.set (every island would break the graph), but it
# replays the mutation of a plain list; only the tracing thread touches it
_TRACED_OUTER: list[tuple[str, torch.dtype] | None] = []


def _outer_autocast() -> tuple[str, torch.dtype] | None:
    if torch.compiler.is_compiling():
        return _TRACED_OUTER[-1] if _TRACED_OUTER else None
    return _OUTER_AUTOCAST.get()


@contextlib.contextmanager
def _outer_set(value: tuple[str, torch.dtype] | None) -> Iterator[None]:
    """``value`` as the enclosing island's autocast for the duration (a ContextVar, or the traced list)."""
    if torch.compiler.is_compiling():
        _TRACED_OUTER.append(value)
        try:
            yield
        finally:
            _TRACED_OUTER.pop()
        return
    token = _OUTER_AUTOCAST.set(value)
    try:
        yield
    finally:
        _OUTER_AUTOCAST.reset(token)


@contextlib.contextmanager
def export_islands(dtype: torch.dtype = torch.float16) -> Iterator[None]:
    """Export mode while active: the marks cast at their boundaries for a model whose low dtype is ``dtype``."""
    token = _EXPORT_DTYPE.set(dtype)
    try:
        yield
    finally:
        _EXPORT_DTYPE.reset(token)


def export_islands_active() -> bool:
    return _EXPORT_DTYPE.get() is not None


def _cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, tuple | list):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    return obj


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)


def _island_call(fn: Callable[..., Any], args: tuple, kwargs: dict, out_like: torch.Tensor | None) -> Any:
    """Run ``fn`` as a float32 island under the current mode (see the module docstring)."""
    first = _first_tensor(args, kwargs)
    if first is None:
        return fn(*args, **kwargs)
    if _EXPORT_DTYPE.get() is not None:
        out = fn(*_cast_floats(args, torch.float32), **_cast_floats(kwargs, torch.float32))
        return out if out_like is None else _cast_floats(out, out_like.dtype)
    device = first.device.type
    if not torch.is_autocast_enabled(device):
        return fn(*args, **kwargs)
    with _outer_set((device, torch.get_autocast_dtype(device))), torch.autocast(device, enabled=False):
        return fn(*_cast_floats(args, torch.float32), **_cast_floats(kwargs, torch.float32))


def _reduced_call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """Run ``fn`` in the reduced precision again inside an island; floating results float32."""
    low = _EXPORT_DTYPE.get()
    if low is not None:
        return _cast_floats(fn(*_cast_floats(args, low), **_cast_floats(kwargs, low)), torch.float32)
    outer = _outer_autocast()
    if outer is None:  # not inside an island that switched autocast off: nothing to undo
        return fn(*args, **kwargs)
    device, dtype = outer
    with _outer_set(None), torch.autocast(device, dtype=dtype):
        return _cast_floats(fn(*args, **kwargs), torch.float32)


def float32_island(op: Callable[..., Any] | None = None, *, out_like: int | None = 0) -> Any:
    """Decorator: the function is a float32 island. In export mode its floating results are cast to the dtype of
    positional argument ``out_like`` (``None``: they stay float32, e.g. patch matching's similarity and the attention
    statistics)."""
    if op is None:
        return functools.partial(float32_island, out_like=out_like)

    @functools.wraps(op)
    def island(*args: Any, **kwargs: Any) -> Any:
        return _island_call(op, args, kwargs, None if out_like is None else args[out_like])

    return island


def float32_module(cls: _ModuleT) -> _ModuleT:
    """Class decorator: ``forward`` is a float32 island (results in its first tensor argument's dtype in export
    mode) and the module's parameters stay float32 in :func:`convert_for_export`."""
    forward = cls.forward

    @functools.wraps(forward)
    def island_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return _island_call(functools.partial(forward, self), args, kwargs, _first_tensor(args, kwargs))

    cls.forward = island_forward
    setattr(cls, PRECISION_ATTR, "float32")
    return cls


def reduced_precision_module(cls: _ModuleT | None = None, *, methods: tuple[str, ...] = ("forward",)) -> Any:
    """Class decorator for a sub-network inside a float32 island that runs in the reduced precision: each of
    ``methods`` takes its arguments in the low dtype and returns float32; its parameters take the low dtype in
    :func:`convert_for_export`."""
    if cls is None:
        return functools.partial(reduced_precision_module, methods=methods)
    for name in methods:
        method = getattr(cls, name)

        def reduced(self: nn.Module, *args: Any, _method: Callable[..., Any] = method, **kwargs: Any) -> Any:
            return _reduced_call(functools.partial(_method, self), args, kwargs)

        setattr(cls, name, functools.wraps(method)(reduced))
    setattr(cls, PRECISION_ATTR, "reduced")
    return cls


def module_precision(module: nn.Module) -> str | None:
    """The mark of ``module``'s class: ``"float32"``, ``"reduced"`` or ``None`` (inherits its parent's)."""
    return getattr(type(module), PRECISION_ATTR, None)


def convert_for_export(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """A copy of ``model`` whose floating parameters and buffers follow the marks: ``dtype`` by default, float32 in
    a :func:`float32_module`, ``dtype`` again in a :func:`reduced_precision_module` (the nearest mark wins). Trace it
    inside :func:`export_islands` (``dtype``); ``model`` itself is untouched."""
    converted = copy.deepcopy(model)

    def assign(module: nn.Module, inherited: torch.dtype) -> None:
        mark = module_precision(module)
        own = torch.float32 if mark == "float32" else dtype if mark == "reduced" else inherited
        for p in module.parameters(recurse=False):
            if p.is_floating_point():
                p.data = p.data.to(own)
        for name, b in module.named_buffers(recurse=False):
            if b is not None and b.is_floating_point():
                setattr(module, name, b.to(own))
        for child in module.children():
            assign(child, own)

    assign(converted, dtype)
    return converted
