"""Compile our Triton kernels ahead of time for a GPU architecture, without a GPU, and check their resources.

The Triton interpreter runs the kernels' Python on the CPU and never meets the compiler, so a kernel can pass every
interpreter test and still fail to compile, or compile into something a GPU refuses to launch. This module compiles
every kernel × every GPU autotune configuration × every dtype its wrapper accepts, with the constexprs the wrapper
chooses, for a compute capability (``triton.compile`` with a ``GPUTarget``: no GPU needed), each as two calls: the
model's contiguous call as Triton's JIT would specialise it (unit strides constant, multiples of 16 and pointers
marked divisible: vectorised loads, more shared memory) and an unspecialised one (any strides). It assembles the PTX
with the CUDA toolkit's ``ptxas -v`` and checks the hard launch limits:

* registers ≤ 255 per thread, and the block's registers (allocated per warp in units of 256) ≤ 65536;
* shared memory (Triton's dynamic ``metadata.shared`` plus ptxas' static smem) ≤ the per-block opt-in maximum:
  sm_80 163 KiB (166912 bytes), sm_90 227 KiB (232448 bytes) — 1 KiB per block below the SM's 164 / 228 KiB, which
  CUDA reserves; 48 KiB for the AOT TensorRT plugin, which is launched without the opt-in.

Spills (local-memory stores/loads) cost speed, not correctness: they are reported as warnings, never failures.
The kernels themselves stay unverified on GPU hardware: this shows they compile and fit, not that they are right.

CLI: ``python -m sschsr_deploy.kernels.triton.compile_check [--cc 80 90] [--workers 2]`` prints a table and exits 1
on any failure.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from ...engine.plugins import _as_jit
from . import deform_conv, patch_match, spectral_attention

__all__ = [
    "AOT_SHARED_LIMIT",
    "ARCH_LIMITS",
    "ArchLimits",
    "CheckResult",
    "KernelCase",
    "PtxasError",
    "PtxasReport",
    "assemble",
    "check_case",
    "check_dcn_plugin",
    "check_kernels",
    "check_ptx",
    "compilable",
    "find_ptxas",
    "format_table",
    "kernel_cases",
    "parse_ptxas_log",
    "resource_errors",
]


@dataclass(frozen=True)
class ArchLimits:
    """Per-block launch limits of one compute capability (CUDA programming guide, compute capabilities table)."""

    shared_optin: int  # bytes of shared memory one block may use after cudaFuncSetAttribute's opt-in
    regs_per_block: int = 65536
    regs_per_thread: int = 255
    threads_per_block: int = 1024


ARCH_LIMITS = {80: ArchLimits(shared_optin=163 * 1024), 90: ArchLimits(shared_optin=227 * 1024)}
AOT_SHARED_LIMIT = 48 * 1024  # what a launch gets without the opt-in (TensorRT's AOT plugins)
_REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256 (8 per thread)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------------------
# results

@dataclass(frozen=True)
class PtxasReport:
    """What ``ptxas -v`` says about one entry function."""

    registers: int
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    stack: int  # bytes of stack frame per thread
    static_shared: int  # bytes of static shared memory (Triton's is dynamic: usually 0)


@dataclass(frozen=True)
class CheckResult:
    """One kernel variant compiled for one architecture: its resources and what is wrong with them."""

    kernel: str  # "deform_conv", "gram_norms", "attn_apply", "patch_match", "dcn_plugin"
    variant: str  # configuration, dtype and flags
    cc: int
    num_warps: int
    shared: int | None = None  # Triton's dynamic shared memory in bytes (None: the compile failed)
    ptxas: PtxasReport | None = None
    errors: tuple[str, ...] = ()  # hard failures: compile, assembly, launch limits
    warnings: tuple[str, ...] = ()  # spills

    @property
    def ok(self) -> bool:
        return not self.errors


class PtxasError(RuntimeError):
    """ptxas rejected a PTX (its log is the message)."""


# ---------------------------------------------------------------------------------------------------------------------
# what to compile

@dataclass(frozen=True)
class KernelCase:
    """One compilation: a kernel, a launch configuration and the argument types of a representative call."""

    name: str  # short kernel name for reports
    kernel: Any  # "module:attribute" of the (autotuned) @triton.jit kernel, or the kernel object itself
    variant: str
    signature: dict[str, str] = field(hash=False)  # every parameter: "*fp16", "i32", ... or "constexpr"
    constexprs: dict[str, Any] = field(hash=False)
    attrs: dict[tuple[int, ...], list] = field(default_factory=dict, hash=False)  # e.g. 16-divisibility
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class _Variant:
    """One way of calling a kernel: its label, pointer types, constexprs and, for a specialised call, the ints."""

    label: str
    pointers: dict[str, str]
    constexprs: dict[str, Any]
    ints: dict[str, int] | None = None  # a representative call's int arguments; None: nothing known about them


_DIVISIBLE = [["tt.divisibility", 16]]


def _specialize(fn: JITFunction, v: _Variant) -> tuple[dict[str, str], dict[str, Any], dict]:
    """Signature, constexprs and attributes the JIT would compile ``v`` with.

    Triton specialises every launch on its arguments: an int equal to 1 becomes a constant, ints that are multiples
    of 16 and 16-byte-aligned pointers are marked divisible (which enables vectorised loads and cp.async pipelining,
    hence more shared memory). With ``v.ints`` these rules are applied to a representative contiguous call (pointers
    aligned); without, nothing is assumed: every int is a plain i32 (any strides, any sizes).
    """
    unknown = set(v.ints or {}) - set(fn.arg_names)
    if unknown:
        raise ValueError(f"{fn.__name__} has no parameters {sorted(unknown)}")
    constexprs = dict(v.constexprs)
    divisible = list(v.pointers) if v.ints is not None else []
    for name, value in (v.ints or {}).items():
        if value == 1:
            constexprs[name] = 1
        elif value % 16 == 0:
            divisible.append(name)
    signature = {a: "constexpr" if a in constexprs else v.pointers.get(a, "i32") for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): _DIVISIBLE for a in divisible}
    return signature, constexprs, attrs


def _config_label(cfg: triton.Config) -> str:
    blocks = " ".join(f"{k[6:] if k.startswith('BLOCK_') else k}={v}" for k, v in cfg.kwargs.items())
    return f"{blocks} w{cfg.num_warps} s{cfg.num_stages}"


def _cases(name: str, kernel: str, configs: Iterable[triton.Config], variants: Iterable[_Variant]):
    """Cross every autotune configuration with every variant of the call."""
    fn = compilable(_resolve(kernel))
    variants = list(variants)
    for cfg in configs:
        for v in variants:
            v = _Variant(v.label, v.pointers, {**v.constexprs, **cfg.kwargs}, v.ints)
            signature, constexprs, attrs = _specialize(fn, v)
            yield KernelCase(name, kernel, f"{_config_label(cfg)} {v.label}", signature, constexprs, attrs,
                             cfg.num_warps, cfg.num_stages)


def _strides(prefix: str, shape: Sequence[int], suffixes: str) -> dict[str, int]:
    """``{prefix + suffix: stride}`` of a contiguous tensor of ``shape``."""
    strides = torch.empty(shape, device="meta").stride()
    return {f"{prefix}_s{sfx}": st for sfx, st in zip(suffixes, strides, strict=True)}


def _deform_conv_model_ints() -> dict[str, int]:
    """The model's DCN on a contiguous 64×64 tile: 64 → 64 channels, 3×3, stride 1, padding 1, 8 offset groups."""
    c, h, w, g, k = 64, 64, 64, 8, 9
    sizes = {"H": h, "W": w, "Wo": w, "NPIX": h * w, "GROUPS": 1, "Og": c, "Cg": c, "KDIM": c * k, "CPG": c // g}
    conv = {"SH": 1, "SW": 1, "PH": 1, "PW": 1, "DH": 1, "DW": 1}
    maps = {"x": (1, c, h, w), "o": (1, 2 * g * k, h, w), "m": (1, g * k, h, w), "y": (1, c, h, w)}
    strides = {n: st for p, shape in maps.items() for n, st in _strides(p, shape, "bchw").items()}
    return {**sizes, **strides, **_strides("w", (c, c, 3, 3), "ochw"), **conv}


def _deform_conv_cases() -> list[KernelCase]:
    def variants():
        for dt, tdt in _DTYPES.items():
            ptrs = {a: f"*{dt}" for a in ("x_ptr", "off_ptr", "msk_ptr", "w_ptr", "b_ptr", "y_ptr")}
            consts = {"KH": 3, "KW": 3, "DOT_PRECISION": deform_conv._dot_precision(tdt)}
            # the model's call (mask and bias, contiguous); any other call, without mask and bias
            yield _Variant(f"{dt} model", ptrs, {**consts, "HAS_MASK": True, "HAS_BIAS": True},
                           _deform_conv_model_ints())
            yield _Variant(f"{dt} generic no-mask/bias", ptrs, {**consts, "HAS_MASK": False, "HAS_BIAS": False})

    mod = deform_conv.__name__
    return list(_cases("deform_conv", f"{mod}:_deform_conv2d_kernel", deform_conv.GPU_CONFIGS, variants()))


def _block_c_values() -> list[int]:
    """Every BLOCK_C the spectral-attention wrappers can choose."""
    top = 2 * spectral_attention._MAX_BLOCK_C
    return sorted({spectral_attention._block_c(c) for c in range(1, top + 1)})


def _attention_model_ints(block_c: int, gram: bool) -> dict[str, int]:
    """q, k, v chunked from one (1, 3·C, 64, 64) tensor (as the model does), 4 heads of ``block_c`` channels, pixels
    split in 16 (the Gram pass's GPU default for so few programs)."""
    heads, n, splits = 4, 64 * 64, 16
    ch = heads * block_c
    qkv = dict(zip("bcn", torch.empty(1, 3 * ch, n, device="meta").stride(), strict=True))
    ints = {"heads": heads, "c": block_c, "N": n, "NC": 1}
    if gram:
        ints |= {"n_per_split": n // splits, "S": splits}
        return ints | {f"{t}_s{d}": st for t in "qk" for d, st in qkv.items()}
    return ints | {f"v_s{d}": st for d, st in qkv.items()} | _strides("y", (1, ch, n), "bcn")


def _spectral_attention_cases() -> list[KernelCase]:
    def variants(fp32_ptrs: tuple[str, ...], io_ptrs: tuple[str, ...], gram: bool):
        for dt, tdt in _DTYPES.items():
            ptrs = {**{a: "*fp32" for a in fp32_ptrs}, **{a: f"*{dt}" for a in io_ptrs}}
            consts = {"DOT_PRECISION": spectral_attention._dot_precision(tdt)}
            for block_c in _block_c_values():
                yield _Variant(f"{dt} C={block_c} model", ptrs, {**consts, "BLOCK_C": block_c},
                               _attention_model_ints(block_c, gram))
            top = max(_block_c_values())  # the largest tile, for the unspecialised call
            yield _Variant(f"{dt} C={top} generic", ptrs, {**consts, "BLOCK_C": top})

    mod = spectral_attention.__name__
    gram = _cases("gram_norms", f"{mod}:_gram_norms_kernel", spectral_attention.GRAM_GPU_CONFIGS,
                  variants(("g_ptr", "qsq_ptr", "ksq_ptr"), ("q_ptr", "k_ptr"), gram=True))
    apply = _cases("attn_apply", f"{mod}:_attn_apply_kernel", spectral_attention.APPLY_GPU_CONFIGS,
                   variants(("a_ptr",), ("v_ptr", "y_ptr"), gram=False))
    return [*gram, *apply]


def _patch_match_model_ints() -> dict[str, int]:
    """64-channel 64×64 feature maps, 3×3 patches: unfolded windows and patches (1, 576, 62·62), contiguous."""
    d, p = 64 * 9, 62 * 62
    return {"P": p, "NREF": p, "D": d, **_strides("w", (1, d, p), "bdp"), **_strides("t", (1, d, p), "bdn")}


def _patch_match_cases() -> list[KernelCase]:
    def variants():
        for dt, tdt in _DTYPES.items():
            ptrs = {"win_ptr": f"*{dt}", "pat_ptr": f"*{dt}", "wn_ptr": "*fp32", "idx_ptr": "*i64", "sim_ptr": f"*{dt}"}
            consts = {"DOT_PRECISION": patch_match._dot_precision(tdt)}
            yield _Variant(f"{dt} model", ptrs, consts, _patch_match_model_ints())
            yield _Variant(f"{dt} generic", ptrs, consts)

    mod = patch_match.__name__
    return list(_cases("patch_match", f"{mod}:_patch_match_kernel", patch_match.GPU_CONFIGS, variants()))


def kernel_cases(kernels: Sequence[str] | None = None) -> list[KernelCase]:
    """Every kernel × GPU autotune configuration × dtype (× wrapper-chosen constexprs), optionally only ``kernels``."""
    cases = [*_deform_conv_cases(), *_spectral_attention_cases(), *_patch_match_cases()]
    return [c for c in cases if kernels is None or c.name in kernels]


# ---------------------------------------------------------------------------------------------------------------------
# compile (Triton → PTX) and assemble (ptxas)

_COMPILABLE: dict[Any, JITFunction] = {}


def _resolve(kernel: Any) -> Any:
    if not isinstance(kernel, str):
        return kernel
    module, attr = kernel.split(":")
    return getattr(importlib.import_module(module), attr)


def compilable(kernel: Any) -> JITFunction:
    """A ``JITFunction`` that ``triton.compile`` accepts, also for a kernel defined under ``TRITON_INTERPRET=1``.

    ``plugins._as_jit`` unwraps the autotuner and the interpreter; under the interpreter the ``@jit`` functions a
    kernel calls (e.g. the combine function of ``tl.reduce``) are interpreter objects as well, which the compiler
    refuses, so the kernel is rebuilt over a copy of its globals in which each of them is made compilable too.
    """
    jit = _as_jit(kernel)
    fn = jit.fn
    if fn in _COMPILABLE:
        return _COMPILABLE[fn]
    callees = [n for n in fn.__code__.co_names if isinstance(fn.__globals__.get(n), InterpretedFunction)]
    if not callees:
        _COMPILABLE[fn] = jit
        return jit
    scope = dict(fn.__globals__)
    clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    clone.__qualname__, clone.__module__, clone.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
    _COMPILABLE[fn] = result = JITFunction(clone)
    for n in callees:
        scope[n] = compilable(scope[n])
    return result


def _compile(case: KernelCase, cc: int) -> Any:
    src = ASTSource(fn=compilable(_resolve(case.kernel)), signature=case.signature, constexprs=case.constexprs,
                    attrs=case.attrs)
    options = {"num_warps": case.num_warps, "num_stages": case.num_stages}
    return triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)


def find_ptxas() -> str | None:
    """The CUDA toolkit's ptxas ($CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then PATH), or None."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in filter(None, roots):
        path = Path(root) / "bin" / "ptxas"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("ptxas")


def _ptx_target(ptx: str) -> str:
    """The architecture the PTX was generated for (Triton writes ``sm_90a`` for cc 90): what ptxas must target."""
    m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.MULTILINE)
    if m is None:
        raise PtxasError("the PTX has no .target directive")
    return m.group(1)


def _ptx_entry(ptx: str) -> str:
    m = re.search(r"\.visible\s+\.entry\s+([\w$]+)", ptx)
    if m is None:
        raise PtxasError("the PTX has no .visible .entry")
    return m.group(1)


def assemble(ptx: str, ptxas: str) -> PtxasReport:
    """Assemble with ``ptxas -v`` for the PTX's own target; raises :class:`PtxasError` with the log when rejected."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [ptxas, "-v", f"-arch={_ptx_target(ptx)}", str(src), "-o", str(Path(tmp) / "kernel.cubin")]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        raise PtxasError(f"ptxas exited with {proc.returncode}: {log.strip()}")
    return parse_ptxas_log(log, _ptx_entry(ptx))


def _log_int(pattern: str, text: str, default: int | None = None) -> int:
    m = re.search(pattern, text)
    if m is None:
        if default is None:
            raise PtxasError(f"no match for {pattern!r} in the ptxas log: {text.strip()}")
        return default
    return int(m.group(1))


def parse_ptxas_log(log: str, name: str) -> PtxasReport:
    """Registers, spills, stack and static shared memory of entry function ``name`` from a ``ptxas -v`` log."""
    start = log.find(f"Compiling entry function '{name}'")
    if start < 0:
        raise PtxasError(f"entry function {name!r} is not in the ptxas log: {log.strip()}")
    nxt = log.find("Compiling entry function", start + 1)
    section = log[start: nxt if nxt > 0 else len(log)]
    return PtxasReport(
        registers=_log_int(r"Used (\d+) registers", section),
        spill_stores=_log_int(r"(\d+) bytes spill stores", section, 0),
        spill_loads=_log_int(r"(\d+) bytes spill loads", section, 0),
        stack=_log_int(r"(\d+) bytes stack frame", section, 0),
        static_shared=_log_int(r"(\d+) bytes smem", section, 0),
    )


# ---------------------------------------------------------------------------------------------------------------------
# checks

def resource_errors(report: PtxasReport, shared: int, num_warps: int, cc: int,
                    shared_limit: int | None = None) -> list[str]:
    """The hard launch limits ``report`` breaks for a block of ``num_warps`` warps using ``shared`` dynamic bytes."""
    if cc not in ARCH_LIMITS:
        raise ValueError(f"no launch limits recorded for compute capability {cc} (known: {sorted(ARCH_LIMITS)})")
    lim = ARCH_LIMITS[cc]
    threads = num_warps * 32
    per_warp = -(-report.registers * 32 // _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
    smem = shared + report.static_shared
    smem_limit = lim.shared_optin if shared_limit is None else min(shared_limit, lim.shared_optin)
    errors = []
    if threads > lim.threads_per_block:
        errors.append(f"{threads} threads per block > {lim.threads_per_block}")
    if report.registers > lim.regs_per_thread:
        errors.append(f"{report.registers} registers per thread > {lim.regs_per_thread}")
    if per_warp * num_warps > lim.regs_per_block:
        errors.append(f"{per_warp * num_warps} registers per block ({num_warps} warps) > {lim.regs_per_block}")
    if smem > smem_limit:
        errors.append(f"{smem} bytes of shared memory per block > {smem_limit}")
    return errors


def _spill_warnings(report: PtxasReport) -> tuple[str, ...]:
    if report.spill_stores or report.spill_loads:
        return (f"spills {report.spill_stores} bytes stored / {report.spill_loads} loaded per thread",)
    return ()


def check_ptx(kernel: str, variant: str, cc: int, ptx: str, shared: int, num_warps: int, ptxas: str,
              shared_limit: int | None = None) -> CheckResult:
    """Assemble one compiled kernel's PTX and check its resources against the architecture's limits."""
    base = {"kernel": kernel, "variant": variant, "cc": cc, "num_warps": num_warps, "shared": shared}
    try:
        report = assemble(ptx, ptxas)
    except (PtxasError, subprocess.TimeoutExpired) as e:
        return CheckResult(**base, errors=(f"ptxas: {e}",))
    errors = resource_errors(report, shared, num_warps, cc, shared_limit)
    return CheckResult(**base, ptxas=report, errors=tuple(errors), warnings=_spill_warnings(report))


def check_case(case: KernelCase, cc: int, ptxas: str) -> CheckResult:
    """Compile one case for ``cc`` and check it; a compile failure is a result, not an exception."""
    try:
        compiled = _compile(case, cc)
    except Exception as e:  # noqa: BLE001 - any compiler failure is what this check reports
        msg = f"compile failed: {type(e).__name__}: {e}"
        return CheckResult(case.name, case.variant, cc, case.num_warps, errors=(msg,))
    meta = compiled.metadata
    return check_ptx(case.name, case.variant, cc, compiled.asm["ptx"], meta.shared, meta.num_warps, ptxas)


def _check_job(job: tuple[KernelCase, int, str]) -> CheckResult:
    return check_case(*job)


def check_kernels(ccs: Sequence[int] = (80, 90), kernels: Sequence[str] | None = None, workers: int = 1,
                  ptxas: str | None = None) -> list[CheckResult]:
    """Check every case of :func:`kernel_cases` for every compute capability, in ``workers`` processes."""
    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise FileNotFoundError("ptxas not found: install the CUDA toolkit or set CUDA_HOME")
    jobs = [(case, cc, ptxas) for cc in ccs for case in kernel_cases(kernels)]
    if workers <= 1:
        return [_check_job(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of torch's threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(_check_job, jobs))


def check_dcn_plugin(dtype: str, cc: int, ptxas: str | None = None) -> CheckResult:
    """The AOT TensorRT plugin's DCN PTX, checked against the 48 KiB a launch gets without the opt-in."""
    from ...engine.plugins import DCN_NUM_WARPS, compile_deform_conv_ptx

    ptxas = ptxas or find_ptxas()
    if ptxas is None:
        raise FileNotFoundError("ptxas not found: install the CUDA toolkit or set CUDA_HOME")
    try:
        k = compile_deform_conv_ptx(dtype=dtype, compute_capability=cc)
    except Exception as e:  # noqa: BLE001 - any compiler failure is what this check reports
        msg = f"compile failed: {type(e).__name__}: {e}"
        return CheckResult("dcn_plugin", dtype, cc, DCN_NUM_WARPS, errors=(msg,))
    return check_ptx("dcn_plugin", dtype, cc, k.ptx, k.shared_mem, k.num_warps, ptxas, AOT_SHARED_LIMIT)


# ---------------------------------------------------------------------------------------------------------------------
# report

def format_table(results: Iterable[CheckResult]) -> str:
    """One line per result: kernel, variant, arch, warps, registers, spills, shared memory, status."""
    head = (f"{'kernel':<12} {'variant':<44} {'cc':>3} {'warps':>5} {'regs':>4} {'spill st/ld':>12} {'shared':>7}"
            "  status")
    lines = [head, "-" * len(head)]
    for r in results:
        p = r.ptxas
        regs = str(p.registers) if p else "-"
        spills = f"{p.spill_stores}/{p.spill_loads}" if p else "-"
        status = "; ".join(r.errors) if r.errors else ("; ".join(r.warnings) or "ok")
        lines.append(f"{r.kernel:<12} {r.variant:<44} {r.cc:>3} {r.num_warps:>5} {regs:>4} {spills:>12} "
                     f"{r.shared if r.shared is not None else '-':>7}  {status}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Check every kernel and the DCN plugin for the given architectures; print the table; 1 on any failure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args(argv)
    results = check_kernels(args.cc, workers=args.workers)
    results += [check_dcn_plugin(dt, cc) for cc in args.cc for dt in ("float32", "float16")]
    print(format_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
