"""A stand-in for the surface of TensorRT that our plugin code meets, for CPU tests: ``tensorrt.plugin`` (the Python
plugin API of TensorRT >= 10.9), the few ``tensorrt`` names it uses, and onnx-tensorrt's routing of custom nodes.

TensorRT cannot be installed on our machines, so the plugin definitions (:mod:`sschsr_deploy.engine.ops`) are
checked against this module instead. It is written from TensorRT's documentation of ``tensorrt.plugin`` and of the
ONNX parser, with the same *validation* TensorRT performs where it rejects code:

- decorated functions are read with ``inspect.signature`` and their annotations used as they are: an annotation that
  is not a class (a string under ``from __future__ import annotations``) makes ``issubclass`` raise ``TypeError``;
- ``register``: tensors first, then attributes of the serializable types (int, float, bytes, bool, str,
  ``numpy.typing.NDArray[dtype]``), no defaults, a return annotation ``TensorDesc`` or ``tuple[TensorDesc, ...]``;
- ``impl`` / ``aot_impl`` / ``autotune``: the parameter names of the registered schema, then ``outputs`` and
  ``stream`` / ``tactic``; ``aot_impl`` must be annotated ``tuple[str | bytes, str | bytes, KernelLaunchParams,
  SymExprs]`` and must return exactly that, every extra argument a ``SymInt32``;
- shape functions run twice, as TensorRT runs them: first with *fake* shape expressions (output dtypes only), then
  with symbolic ones; expressions support ``+ - * // == <`` with an int or an expression on the right and nothing else
  (no ``int()``, no ``%``, no reflected operators); constants are read through ``is_constant`` / ``constant_value()``;
- the parser (:func:`parse_plugin_node`): ``aot=1`` is a *strict* AOT request, ``aot=0`` strict JIT; a plugin without
  the requested implementation is refused; only registered attributes reach the plugin, INT as int, INTS as int32.

Stricter than TensorRT in one place, on purpose: using an expression as a bool raises (TensorRT's ``==`` returns an
expression that is always truthy, a silent bug). Symbolic expressions here can be evaluated (:meth:`SymExpr.value`)
so tests check what a shape function or launch grid computes for concrete sizes.
"""

from __future__ import annotations  # this module only: it is the checker, not code TensorRT validates

import enum
import importlib.machinery
import inspect
import itertools
import operator
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# tensorrt (the names our code uses)


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    BF16 = "bfloat16"
    INT32 = "int32"
    INT64 = "int64"
    INT8 = "int8"
    BOOL = "bool"


_TYPE_NAMES = {"FP32": DataType.FLOAT, "FP16": DataType.HALF}  # AutoTuneCombination's two short names


def _data_type(name: str) -> DataType:
    if name in _TYPE_NAMES:
        return _TYPE_NAMES[name]
    try:
        return DataType[name]
    except KeyError:
        raise AttributeError(f"type object 'DataType' has no attribute {name!r}") from None


# ---------------------------------------------------------------------------------------------------------------------
# symbolic expressions

_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv,
        "==": lambda a, b: int(a == b), "<": lambda a, b: int(a < b), "cdiv": lambda a, b: -(-a // b),
        "max": max, "min": min}


class SymExpr:
    """A symbolic integer: a constant, a named dimension, or an operation; ``fake`` in TensorRT's first pass."""

    def __init__(self, node: Any = None, fake: bool = False) -> None:
        if isinstance(node, SymExpr):
            node, fake = node._node, node._fake
        elif isinstance(node, int) and not isinstance(node, bool):
            node = ("const", node)
        elif node is not None and not isinstance(node, tuple):
            raise TypeError(f"{type(self).__name__} takes an int or an expression, got {type(node).__name__}")
        self._node = node
        self._fake = fake or node is None

    # TensorRT's operators: an int or an expression on the right, nothing reflected
    def _op(self, op: str, other: Any) -> SymExpr:
        if isinstance(other, bool) or not isinstance(other, int | SymExpr):
            raise TypeError(f"unsupported operand for {op}: {type(self).__name__} and {type(other).__name__}")
        cls = ShapeExpr if isinstance(self, ShapeExpr) else SymIntExpr
        if self._fake or (isinstance(other, SymExpr) and other._fake):
            return cls(fake=True)
        return cls((op, self, other if isinstance(other, SymExpr) else SymInt32(other)))

    def __add__(self, other):
        return self._op("+", other)

    def __sub__(self, other):
        return self._op("-", other)

    def __mul__(self, other):
        return self._op("*", other)

    def __floordiv__(self, other):
        return self._op("//", other)

    def __eq__(self, other):  # type: ignore[override]
        return self._op("==", other)

    def __lt__(self, other):
        return self._op("<", other)

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self):
        raise TypeError("a symbolic expression has no truth value (TensorRT's would always be true)")

    @property
    def is_fake(self) -> bool:
        return self._fake

    @property
    def is_constant(self) -> bool:
        if self._fake:
            raise RuntimeError("Not accessible for fake 'ShapeExpr's. Check is_fake to determine accessibility.")
        return not self._symbols()

    def constant_value(self) -> int:
        if not self.is_constant:
            raise RuntimeError("Not accessible for non-constant shape expressions. Check is_constant first.")
        return self.value({})

    def _symbols(self) -> set[str]:
        kind = self._node[0]
        if kind == "const":
            return set()
        if kind == "sym":
            return {self._node[1]}
        return self._node[1]._symbols() | self._node[2]._symbols()

    def value(self, env: Mapping[str, int]) -> int:
        """The expression's value for concrete dimension values (test helper; TensorRT evaluates at run time)."""
        if self._fake:
            raise RuntimeError("a fake expression has no value")
        kind = self._node[0]
        if kind == "const":
            return self._node[1]
        if kind == "sym":
            return int(env[self._node[1]])
        return _OPS[kind](self._node[1].value(env), self._node[2].value(env))

    def __repr__(self) -> str:
        return f"{type(self).__name__}[{'fake' if self._fake else self._node}]"


class SymIntExpr(SymExpr):
    pass


class SymInt32(SymIntExpr):
    pass


class ShapeExpr(SymInt32):
    pass


def dim(name: str) -> ShapeExpr:
    """A named dynamic dimension (test helper)."""
    return ShapeExpr(("sym", name))


def cdiv(first: int | SymExpr, second: int | SymExpr) -> ShapeExpr:
    if isinstance(first, int) and isinstance(second, int):
        raise ValueError("Both arguments cannot be 'int's")
    expr = first if isinstance(first, SymExpr) else ShapeExpr(first)
    return ShapeExpr(expr._op("cdiv", second))


class SymExprs:
    def __init__(self, exprs: list[SymExpr]) -> None:
        self._exprs = list(exprs)

    @classmethod
    def from_tuple(cls, exprs) -> SymExprs:
        return cls([e if isinstance(e, SymExpr) else SymInt32(e) for e in exprs])

    def __iter__(self):
        return iter(self._exprs)

    def __getitem__(self, i):
        return self._exprs[i]

    def __len__(self) -> int:
        return len(self._exprs)


class SymIntExprs(SymExprs):
    @classmethod
    def from_tuple(cls, exprs) -> SymIntExprs:  # as TensorRT's: bare ints become plain SymIntExpr, not SymInt32
        return cls([e if isinstance(e, SymIntExpr) else SymIntExpr(e) for e in exprs])


class ShapeExprs(SymExprs):
    @classmethod
    def from_tuple(cls, exprs) -> ShapeExprs:
        return cls([e if isinstance(e, ShapeExpr) else ShapeExpr(e) for e in exprs])

    @classmethod
    def fake(cls, rank: int) -> ShapeExprs:
        return cls([ShapeExpr(fake=True) for _ in range(rank)])


class TensorDesc:
    def __init__(self, shape_expr: ShapeExprs | None = None, dtype: DataType | None = None) -> None:
        self.shape_expr = shape_expr
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape_expr)

    def like(self) -> TensorDesc:
        return TensorDesc(ShapeExprs(list(self.shape_expr)), self.dtype)

    def aliased(self) -> TensorDesc:
        return self.like()


def from_shape_expr(shape_expr, dtype: DataType) -> TensorDesc:
    if not isinstance(dtype, DataType):
        raise TypeError(f"dtype must be a tensorrt.DataType, got {type(dtype).__name__}")
    shape = ShapeExprs.from_tuple(shape_expr) if isinstance(shape_expr, tuple) else shape_expr
    if not isinstance(shape, ShapeExprs):
        raise TypeError(f"shape_expr must be a tuple or ShapeExprs, got {type(shape_expr).__name__}")
    return TensorDesc(shape, dtype)


class KernelLaunchParams:
    _FIELDS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem")

    def __init__(self) -> None:
        for name in self._FIELDS:
            object.__setattr__(self, name, SymInt32(0 if name == "shared_mem" else 1))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._FIELDS:
            raise AttributeError(f"KernelLaunchParams has no field {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | SymIntExpr):
            raise TypeError(f"{name} must be an int or a symbolic int expression, got {type(value).__name__}")
        object.__setattr__(self, name, SymInt32(value))


@dataclass
class AutoTuneCombination:
    io_types: str | None = None
    layouts: str | None = None
    tactics: Any = None

    def entries(self) -> list[list[DataType]]:
        """The allowed types per I/O position; raises as TensorRT does on unknown names or mixed separators."""
        out = []
        for entry in (s.strip() for s in (self.io_types or "").split(",")):
            if "|" in entry and "*" in entry:
                raise ValueError(f"Type/Format '{entry}' contains both '|' and '*'")
            out.append([_data_type(t.strip()) for t in entry.replace("*", "|").split("|")])
        return out


class Tensor:
    """What an ``impl`` receives: a view of a buffer (here a CPU torch tensor, shared through DLPack)."""

    def __init__(self, data) -> None:
        self._data = data
        self.data_ptr = data.data_ptr()
        self.shape = tuple(data.shape)
        self.dtype = DataType(str(data.dtype).replace("torch.", ""))

    def __dlpack__(self, **kwargs):
        return self._data.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()


# ---------------------------------------------------------------------------------------------------------------------
# decorators and their validation

_ATTR_TYPES = (int, float, bytes, bool, str)
_ARRAY_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_)
_RESERVED = {"outputs", "stream", "tactic"}


@dataclass
class PluginDef:
    plugin_id: str
    register_fn: Callable
    tensor_names: list[str]
    attrs: dict[str, Any]  # name -> annotation, in registration order
    num_outputs: int
    impl_fn: Callable | None = None
    aot_fn: Callable | None = None
    autotune_fn: Callable | None = None
    impl_attrs: list[str] = field(default_factory=list)
    autotune_attrs: list[str] = field(default_factory=list)


class Registry:
    def __init__(self) -> None:
        self.plugins: dict[str, PluginDef] = {}

    def get(self, plugin_id: str) -> PluginDef:
        if plugin_id not in self.plugins:
            raise ValueError(f"plugin {plugin_id!r} is not registered")
        return self.plugins[plugin_id]


REGISTRY = Registry()


def _is_tensor_desc(annotation: Any) -> bool:
    return issubclass(annotation, TensorDesc)  # raises TypeError for a non-class annotation, as TensorRT does


def _check_attr_type(name: str, annotation: Any) -> None:
    if annotation in _ATTR_TYPES:
        return
    if typing.get_origin(annotation) is np.ndarray:
        dtype_arg = typing.get_args(typing.get_args(annotation)[1])[0]
        if dtype_arg in _ARRAY_DTYPES:
            return
    if annotation is np.ndarray:
        raise ValueError("If using non-lazy registration, annotate numpy array attributes using "
                         "'numpy.typing.NDArray[dtype]'")
    raise ValueError(f"Attribute '{name}' of type {annotation} is not a supported serializable type.")


def register(plugin_id: str):
    def decorator(fn: Callable) -> Callable:
        ns, _, name = plugin_id.partition("::")
        if not name or "::" in name or "." in ns or "." in name:
            raise ValueError(f"invalid plugin id {plugin_id!r}: expected 'namespace::name' without dots")
        if ns in {"", "trt", "tensorrt", "std"}:
            raise ValueError(f"Provided namespace {ns} is a reserved namespace")
        if plugin_id in REGISTRY.plugins:
            raise ValueError(f"'_Op' already has a defintion for '{name}'")
        sig = inspect.signature(fn)
        tensors, attrs = [], {}
        for pname, param in sig.parameters.items():
            if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                raise ValueError(f"Argument {pname} is not a positional-or-keyword or keyword-only arg")
            if param.annotation is inspect.Parameter.empty:
                raise ValueError(f"Argument {pname} does not have a type annotation.")
            if param.default is not inspect.Parameter.empty:
                raise ValueError(f"Argument {pname} has a default value. Default values are not supported yet.")
            if _is_tensor_desc(param.annotation):
                if attrs:
                    raise ValueError("TensorDescs args and attribute args cannot be interspersed.")
                tensors.append(pname)
            else:
                if not tensors:
                    raise ValueError("TensorDescs args should come first, followed by attributes.")
                if pname in _RESERVED:
                    raise ValueError(f"'{pname}' is not allowed as a plugin attribute name.")
                _check_attr_type(pname, param.annotation)
                attrs[pname] = param.annotation
        ret = sig.return_annotation
        if ret is inspect.Signature.empty:
            raise ValueError(f"No return annotation found for register function. Received signature {sig}.")
        if typing.get_origin(ret) is tuple:
            args = typing.get_args(ret)
            if not args or not all(_is_tensor_desc(a) for a in args):
                raise ValueError("Return types can only be TensorDesc or Tuple[TensorDesc].")
            num_outputs = len(args)
        elif _is_tensor_desc(ret):
            num_outputs = 1
        else:
            raise ValueError("Return types can only be TensorDesc or Tuple[TensorDesc].")
        REGISTRY.plugins[plugin_id] = PluginDef(plugin_id, fn, tensors, attrs, num_outputs)
        return fn

    return decorator


def _check_schema(kind: str, fn: Callable, plugin: PluginDef, tail: list[str], optional_tail: str | None = None
                  ) -> tuple[inspect.Signature, list[str]]:
    """The function's parameters must be the tensors, a subset of the attributes in order, then ``tail``."""
    sig = inspect.signature(fn)
    names = list(sig.parameters)
    if optional_tail and names and names[-1] == optional_tail and optional_tail not in tail:
        names = names[:-1]
    n_t = len(plugin.tensor_names)
    middle = names[n_t: len(names) - len(tail)]
    ok = (names[:n_t] == plugin.tensor_names and names[len(names) - len(tail):] == tail
          and middle == [a for a in plugin.attrs if a in middle])
    if not ok:
        expected = ", ".join([*plugin.tensor_names, "[attributes]", *tail])
        raise ValueError(f"Signature of the {kind} function '{sig}' does not match the expected input arg schema: "
                         f"({expected})")
    return sig, middle


def _tuple_of(annotation: Any, cls: type) -> bool:
    return typing.get_origin(annotation) is tuple and all(issubclass(a, cls) for a in typing.get_args(annotation))


def impl(plugin_id: str):
    def decorator(fn: Callable) -> Callable:
        plugin = REGISTRY.get(plugin_id)
        sig, attrs = _check_schema("impl", fn, plugin, ["outputs", "stream"], optional_tail="tactic")
        for pname, param in sig.parameters.items():
            ann = param.annotation
            if ann is inspect.Parameter.empty:
                continue
            if pname == "outputs" and not _tuple_of(ann, Tensor):
                raise ValueError("'outputs' should be of type Tuple[Tensor]")
            if pname in ("stream", "tactic") and not issubclass(ann, int):
                raise ValueError(f"'{pname}' input argument should be an int")
            if pname in plugin.tensor_names and not issubclass(ann, Tensor):
                raise ValueError(f"Argument {pname} of the impl function should be a Tensor")
        if sig.return_annotation is not inspect.Signature.empty and sig.return_annotation is not None:
            raise ValueError("Return annotation should be None.")
        plugin.impl_fn, plugin.impl_attrs = fn, attrs
        return fn

    return decorator


def _is_str_or_bytes(annotation: Any) -> bool:
    if annotation in (str, bytes):
        return True
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and set(typing.get_args(annotation)) <= {
        str, bytes}


def aot_impl(plugin_id: str):
    def decorator(fn: Callable) -> Callable:
        plugin = REGISTRY.get(plugin_id)
        sig, attrs = _check_schema("aot_impl", fn, plugin, ["outputs", "tactic"])
        if attrs != list(plugin.attrs):  # TensorRT passes every attribute, positionally, to aot_impl
            raise ValueError(f"aot_impl must take every attribute in registration order: {list(plugin.attrs)}")
        for pname, param in sig.parameters.items():
            ann = param.annotation
            if pname == "outputs" and ann is not inspect.Parameter.empty and not _tuple_of(ann, TensorDesc):
                raise ValueError("'outputs' should be of type Tuple[TensorDesc]")
            if pname in plugin.tensor_names and ann is not inspect.Parameter.empty and not _is_tensor_desc(ann):
                raise ValueError(f"Argument {pname} of the aot_impl function should be a TensorDesc")
        ret = sig.return_annotation
        schema = "tuple[str | bytes, str | bytes, tensorrt.plugin.KernelLaunchParams, tensorrt.plugin.SymIntExprs]"
        if ret is inspect.Signature.empty:
            raise ValueError(f"No return annotation found for aot_impl function. Received signature {sig}.")
        args = typing.get_args(ret)
        if (typing.get_origin(ret) is not tuple or len(args) != 4 or not _is_str_or_bytes(args[0])
                or not _is_str_or_bytes(args[1]) or not issubclass(args[2], KernelLaunchParams)
                or not issubclass(args[3], SymExprs)):
            raise ValueError(f"Return annotation of the aot_impl function must be {schema}, got {ret}")
        plugin.aot_fn = fn
        return fn

    return decorator


def autotune(plugin_id: str):
    def decorator(fn: Callable) -> Callable:
        plugin = REGISTRY.get(plugin_id)
        sig, attrs = _check_schema("autotune", fn, plugin, ["outputs"])
        ret = sig.return_annotation
        if ret is not inspect.Signature.empty and not (
                (typing.get_origin(ret) is list and all(issubclass(a, AutoTuneCombination)
                                                        for a in typing.get_args(ret)))
                or ret is AutoTuneCombination):
            raise ValueError("Return annotation of the autotune function must be List[AutoTuneCombination]")
        plugin.autotune_fn, plugin.autotune_attrs = fn, attrs
        return fn

    return decorator


# ---------------------------------------------------------------------------------------------------------------------
# what TensorRT does with a registered plugin at build and run time


def output_descs(plugin: PluginDef, inputs: list[TensorDesc], attrs: Mapping[str, Any]) -> list[TensorDesc]:
    """Both passes of the shape function, as TensorRT runs them; returns the outputs of the symbolic pass."""
    fakes = [TensorDesc(ShapeExprs.fake(d.ndim), d.dtype) for d in inputs]
    for pass_inputs in (fakes, inputs):
        out = plugin.register_fn(*pass_inputs, **attrs)
        outs = list(out) if isinstance(out, tuple) else [out]
        if len(outs) != plugin.num_outputs or not all(isinstance(o, TensorDesc) for o in outs):
            raise ValueError(f"{plugin.plugin_id}: the register function must return {plugin.num_outputs} "
                             f"TensorDesc(s), got {out!r}")
        for o in outs:
            if not isinstance(o.dtype, DataType) or not isinstance(o.shape_expr, ShapeExprs):
                raise ValueError(f"{plugin.plugin_id}: output descriptor without dtype or shape expressions")
    return outs


def autotune_combinations(plugin: PluginDef, inputs: list[TensorDesc], outputs: list[TensorDesc],
                          attrs: Mapping[str, Any]) -> list[list[DataType]]:
    """Every I/O type combination the autotune function allows (entries tied by '|', independent by '*')."""
    values = [attrs[a] for a in plugin.autotune_attrs]
    combos = plugin.autotune_fn(*inputs, *values, tuple(outputs))
    n_io = len(inputs) + len(outputs)
    out = []
    for combo in combos:
        entries = combo.entries()
        if len(entries) != n_io:
            raise ValueError(f"{plugin.plugin_id}: AutoTuneCombination {combo.io_types!r} has {len(entries)} entries "
                             f"for {n_io} inputs and outputs")
        tied = {len(e) for e, raw in zip(entries, combo.io_types.split(","), strict=True) if "|" in raw}
        if len(tied) > 1:
            raise ValueError(f"Type/Format combinations {combo.io_types!r} contain illegal dependent lengths")
        n = max(tied, default=1)
        indep = [i for i, raw in enumerate(combo.io_types.split(",")) if "*" in raw]
        for k in range(n):
            base = [e[k] if len(e) > 1 and i not in indep else e[0] for i, e in enumerate(entries)]
            for choice in itertools.product(*[entries[i] for i in indep]):
                row = list(base)
                for i, t in zip(indep, choice, strict=True):
                    row[i] = t
                out.append(row)
    return out


def aot_launch(plugin: PluginDef, inputs: list[TensorDesc], outputs: list[TensorDesc], attrs: Mapping[str, Any],
               tactic: int = 0) -> tuple[bytes, bytes, KernelLaunchParams, SymExprs]:
    """Call ``aot_impl`` as TensorRT does (every attribute, positionally) and check what it returns."""
    if plugin.aot_fn is None:
        raise ValueError(f"AOT implementation requested, but not defined for '{plugin.plugin_id}'.")
    name, code, params, extra = plugin.aot_fn(*inputs, *[attrs[a] for a in plugin.attrs], tuple(outputs), tactic)
    if not isinstance(name, str | bytes) or not isinstance(code, str | bytes):
        raise TypeError("Kernel name and PTX/CUBIN must be a 'str' or 'bytes'")
    if not isinstance(params, KernelLaunchParams):
        raise TypeError("Launch params must be a 'tensorrt.plugin.KernelLaunchParams'")
    if not isinstance(extra, SymExprs) or not all(isinstance(e, SymInt32) for e in extra):
        raise TypeError("Extra args must be a 'tensorrt.plugin.SymInt32'")
    as_bytes = [v.encode() if isinstance(v, str) else v for v in (name, code)]
    return as_bytes[0], as_bytes[1], params, extra


def run_impl(plugin: PluginDef, inputs: list[Tensor], outputs: list[Tensor], attrs: Mapping[str, Any],
             stream: int = 0) -> None:
    if plugin.impl_fn is None:
        raise ValueError(f"JIT implementation requested, but not defined for '{plugin.plugin_id}'.")
    plugin.impl_fn(*inputs, *[attrs[a] for a in plugin.impl_attrs], outputs, stream=stream)


# ---------------------------------------------------------------------------------------------------------------------
# onnx-tensorrt: a custom node to a plugin


@dataclass
class ParsedNode:
    plugin: PluginDef
    attrs: dict[str, Any]
    request: str  # "strict_aot" | "strict_jit" | "prefer_aot" | "prefer_jit" | "unknown"
    implementation: str  # "aot" | "jit"


def parse_plugin_node(node, prefer: str | None = None, registry: Registry | None = None) -> ParsedNode:
    """What the ONNX parser does with a custom-domain node: find the creator (name, version, namespace or the node's
    domain), forward the registered attributes, and pick the implementation the ``aot`` attribute demands."""
    from onnx import helper

    registry = registry or REGISTRY
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    version = attrs.get("plugin_version", b"1")
    ns = attrs.get("plugin_namespace", node.domain.encode())
    ns = ns.decode() if isinstance(ns, bytes) else ns
    if version not in (b"1", "1"):
        raise ValueError(f"Plugin not found: {node.op_type} version {version!r}: Python plugins are version 1")
    plugin = registry.plugins.get(f"{ns}::{node.op_type}") or registry.plugins.get(f"{node.domain}::{node.op_type}")
    if plugin is None:
        raise ValueError(f"Plugin not found, are the plugin name, version, and namespace correct? ({node.op_type})")
    fields = {}
    for name, ann in plugin.attrs.items():
        if name not in attrs:
            continue
        value = attrs[name]
        fields[name] = np.asarray(value, dtype=np.int32) if isinstance(value, list) else (
            int(value) if ann is int else value)
    if "aot" in attrs:
        request = "strict_aot" if attrs["aot"] else "strict_jit"
    else:
        request = {"aot": "prefer_aot", "jit": "prefer_jit", None: "unknown"}[prefer]
    has_aot, has_jit = plugin.aot_fn is not None, plugin.impl_fn is not None
    if request == "strict_aot" and not has_aot:
        raise ValueError(f"AOT implementation requested, but not defined for '{plugin.plugin_id}'. "
                         "Was @trt.plugin.aot_impl defined?")
    if request == "strict_jit" and not has_jit:
        raise ValueError(f"JIT implementation requested, but not defined for '{plugin.plugin_id}'.")
    if has_aot and has_jit:
        if request == "unknown":
            raise ValueError(f"'{plugin.plugin_id}' has both AOT and JIT implementations: a PREFER_*_PYTHON_PLUGINS "
                             "network flag must be set")
        implementation = "aot" if request in ("strict_aot", "prefer_aot") else "jit"
    else:
        implementation = "aot" if has_aot else "jit"
    return ParsedNode(plugin, fields, request, implementation)


# ---------------------------------------------------------------------------------------------------------------------
# installing the stand-in


def make_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """Fresh ``tensorrt`` and ``tensorrt.plugin`` modules over a fresh registry (put them in ``sys.modules``)."""
    global REGISTRY
    REGISTRY = Registry()
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.9.0-standin"
    trt.DataType = DataType
    trt.float32, trt.float16, trt.bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16
    trt.int32, trt.int64, trt.int8, trt.bool = DataType.INT32, DataType.INT64, DataType.INT8, DataType.BOOL
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.__spec__ = importlib.machinery.ModuleSpec("tensorrt.plugin", None)
    for name in ("TensorDesc", "Tensor", "ShapeExpr", "ShapeExprs", "SymExpr", "SymExprs", "SymIntExpr", "SymInt32",
                 "SymIntExprs", "KernelLaunchParams", "AutoTuneCombination", "register", "impl", "aot_impl",
                 "autotune", "cdiv", "from_shape_expr"):
        setattr(trtp, name, getattr(sys.modules[__name__], name))
    trt.plugin = trtp
    return trt, trtp
