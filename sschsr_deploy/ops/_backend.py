"""Which implementation runs an operator: the native extension (C++/CUDA), Triton, or the plain-PyTorch reference.

Every operator lives in ``torch.ops.sschsr``. When the native extension ``sschsr_deploy._C`` is built, importing it
registers the operators with CPU (and, in CUDA builds, CUDA) kernels; otherwise this module defines the same schemas
with the reference as their implementation, so ``torch.ops.sschsr.*`` always exists and traces the same way.

Choice per call (``auto``): inputs that need gradients → reference (it is differentiable; the deformable convolution
then takes its ``grid_sample`` formulation, which has the fast backward); native kernel for the
tensors' device when built; CUDA tensors without native CUDA kernels → Triton; otherwise the reference. An environment
variable per operator, named after it (``SSCHSR_DEFORM_CONV_BACKEND``, ``SSCHSR_SPECTRAL_ATTENTION_BACKEND``,
``SSCHSR_PATCH_MATCH_BACKEND`` = ``cuda|triton|cpu|reference``) forces one; a forced backend that cannot run raises
instead of silently falling back. The earlier names ``SSCHSR_DCN_BACKEND`` / ``SSCHSR_ATTENTION_BACKEND`` are still
read, with a deprecation warning, when the new one is unset.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
_native_import_error: str | None = None
_forced: dict[str, str] = {}  # op name -> "op" | "reference", set by ``forced_backends`` (export, tracing)
# Resolved once, then read as plain module globals: the per-call dispatch must not call a functools.cache-wrapped
# function, which torch.compile (Dynamo) warns about on every trace.
_native_resolved = False
_native_module: ModuleType | None = None
_triton_found: bool | None = None
_kernels: dict[tuple[str, str], bool] = {}  # (op, "cpu" | "cuda") -> native kernel registered; filled by define_op


def native() -> ModuleType | None:
    """The native extension, or None when it is not built (the reason is kept for ``native_status``)."""
    global _native_import_error, _native_module, _native_resolved
    if not _native_resolved:
        try:
            _native_module = importlib.import_module("sschsr_deploy._C")
        except ImportError as exc:
            _native_import_error = str(exc)
        _native_resolved = True
    return _native_module


def native_status() -> dict:
    """What the native build provides, for diagnostics (``sschsr-deploy info``)."""
    mod = native()
    if mod is None:
        return {"built": False, "error": _native_import_error}
    return {"built": True, "cuda": bool(mod.cuda_built()), "openmp_threads": int(mod.openmp_max_threads())}


def has_kernel(op: str, device_type: str) -> bool:
    """True when ``torch.ops.sschsr.<op>`` has a native kernel for the device type ('cpu' / 'cuda').

    Answered from a table filled when the op is defined (registrations do not change afterwards), so that the
    dispatch inside a ``torch.compile``d model does not call into the dispatcher (a graph break)."""
    known = _kernels.get((op, device_type))
    if known is not None:
        return known
    found = _query_kernel(op, device_type)
    _kernels[(op, device_type)] = found
    return found


def _query_kernel(op: str, device_type: str) -> bool:
    if native() is None:
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"sschsr::{op}", key)


def triton_available() -> bool:
    global _triton_found
    if _triton_found is None:
        _triton_found = importlib.util.find_spec("triton") is not None
    return _triton_found


def hasattr_op(op: str) -> bool:
    """True when ``torch.ops.sschsr.<op>`` is defined (by the extension or by ``define_op``)."""
    try:
        getattr(torch.ops.sschsr, op)
        return True
    except (AttributeError, RuntimeError):
        return False


def define_op(op: str, schema: str, reference: Callable, fake: Callable) -> None:
    """Make ``torch.ops.sschsr.<op>`` exist: natively registered, or defined here with the reference as kernel."""
    native()  # importing the extension registers its operators
    if not hasattr_op(op):
        torch.library.define(f"sschsr::{op}", schema[schema.index("(") :])
        torch.library.impl(f"sschsr::{op}", "CompositeExplicitAutograd")(reference)
    torch.library.register_fake(f"sschsr::{op}")(fake)
    for device_type in ("cpu", "cuda"):
        _kernels[(op, device_type)] = _query_kernel(op, device_type)


@contextlib.contextmanager
def forced_backends(**ops: str) -> Iterator[None]:
    """Force per-op choices while tracing, e.g. ``forced_backends(modulated_deform_conv2d="op")``.

    ``"op"`` calls ``torch.ops.sschsr.<op>`` whatever kernels exist (an exporter sees one custom node and translates
    it); ``"reference"`` inlines the plain-PyTorch reference (the exporter sees standard aten ops).
    """
    bad = {k: v for k, v in ops.items() if v not in ("op", "reference")}
    if bad:
        raise ValueError(f"forced backends must be 'op' or 'reference', got {bad}")
    saved = dict(_forced)
    _forced.update(ops)
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(saved)


#: every operator forced to its plain-PyTorch reference (``forced_backends(**REFERENCE_OPS)``): the official
#: formulation, as the export's parity checks and ``benchmarks/bench_vs_official.py``'s stand-in run it
REFERENCE_OPS = {"modulated_deform_conv2d": "reference", "spectral_attention": "reference",
                 "patch_match": "reference", "gram_and_norms": "reference"}


def reference_forced(op: str) -> bool:
    """True inside ``forced_backends(<op>="reference")``: model code with a faster inference formulation of its own
    around the op keeps the plain one too (the official formulation, as the export's parity reference and
    ``benchmarks/bench_vs_official.py``'s stand-in run it)."""
    return _forced.get(op) == "reference"


#: Earlier names of the per-op variables, read (with a warning) when the op's own variable is unset.
LEGACY_ENV_VARS = {"SSCHSR_DEFORM_CONV_BACKEND": "SSCHSR_DCN_BACKEND",
                   "SSCHSR_SPECTRAL_ATTENTION_BACKEND": "SSCHSR_ATTENTION_BACKEND"}


@functools.cache
def _warn_legacy(old: str, new: str) -> None:
    import warnings

    warnings.warn(f"{old} is deprecated: set {new} (named after the operator) instead", DeprecationWarning,
                  stacklevel=4)


def _requested(env_var: str) -> tuple[str, str]:
    """(variable actually read, its value or 'auto'); the op's own name first, then its earlier name."""
    value = os.environ.get(env_var)
    if value is None:
        old = LEGACY_ENV_VARS.get(env_var)
        if old is not None and old in os.environ:
            _warn_legacy(old, env_var)
            return old, os.environ[old].strip().lower() or "auto"
        return env_var, "auto"
    return env_var, value.strip().lower() or "auto"


def choose(env_var: str, op: str, device: torch.device, needs_grad: bool) -> str:
    """Backend for one call: 'native', 'triton' or 'reference' (see the module docstring for the rules)."""
    if op in _forced:
        return "native" if _forced[op] == "op" else "reference"
    env_var, requested = _requested(env_var)
    if requested not in BACKENDS:
        raise ValueError(f"{env_var}={requested!r} is not one of {', '.join(BACKENDS)}")
    dev = device.type
    if requested == "auto":
        if needs_grad:
            return "reference"
        if has_kernel(op, dev):
            return "native"
        if dev == "cuda" and triton_available():
            return "triton"
        return "reference"
    if requested == "reference":
        return "reference"
    if requested == "triton":
        if not triton_available():
            raise RuntimeError(f"{env_var}=triton but triton is not installed")
        if dev != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{env_var}=triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
        return "triton"
    # 'cpu' or 'cuda': the native kernel of that device
    if dev != requested:
        raise RuntimeError(f"{env_var}={requested} but the tensors are on {dev}")
    if not has_kernel(op, dev):
        why = "the native extension is not built" if native() is None else f"this build has no {requested} kernel"
        raise RuntimeError(f"{env_var}={requested} but {why} (sschsr::{op})")
    return "native"
