"""Every Triton kernel compiled for sm_80 and sm_90 on the CPU, assembled with the CUDA toolkit's ptxas, within limits.

The interpreter tests never meet the compiler. Here every kernel × GPU autotune configuration × dtype (each in the
model's contiguous call and in an unspecialised one), and the AOT TensorRT plugin's DCN, go through ``triton.compile``
for a GPU target and ``ptxas -v``; hard launch limits fail, spills are only printed (run with ``-s`` to see them).
Skipped where the toolkit's ptxas is absent. With a cold Triton cache the file takes about 2.5 minutes on 2 cores (2
worker processes, 3.8 CPU-minutes); with a warm one about 30 s (ptxas still runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' definition (their import)

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from sschsr_deploy.kernels.triton import compile_check as cc  # noqa: E402
from sschsr_deploy.kernels.triton import deform_conv, patch_match, spectral_attention  # noqa: E402

PTXAS = cc.find_ptxas()
pytestmark = pytest.mark.skipif(PTXAS is None, reason="needs the CUDA toolkit's ptxas")

CCS = (80, 90)
GPU_CONFIGS = {
    "deform_conv": deform_conv.GPU_CONFIGS,
    "gram_norms": spectral_attention.GRAM_GPU_CONFIGS,
    "attn_apply": spectral_attention.APPLY_GPU_CONFIGS,
    "patch_match": patch_match.GPU_CONFIGS,
}


@pytest.fixture(scope="module")
def results() -> list[cc.CheckResult]:
    return cc.check_kernels(CCS, workers=2, ptxas=PTXAS)


@pytest.mark.slow
@pytest.mark.parametrize("arch", CCS)
@pytest.mark.parametrize("kernel", sorted(GPU_CONFIGS))
def test_every_config_and_dtype_compiles_within_the_launch_limits(results, kernel, arch):
    mine = [r for r in results if r.kernel == kernel and r.cc == arch]
    for cfg in GPU_CONFIGS[kernel]:  # nothing left out: each config in each dtype
        label = cc._config_label(cfg)
        assert {dt for dt in ("fp32", "fp16", "bf16") if any(r.variant.startswith(f"{label} {dt}") for r in mine)} \
            == {"fp32", "fp16", "bf16"}, label
    print(f"\n{cc.format_table(mine)}")
    failed = [f"{r.variant}: {'; '.join(r.errors)}" for r in mine if not r.ok]
    assert not failed, "\n".join(failed)
    assert all(r.ptxas.registers > 0 and r.shared is not None for r in mine)


@pytest.mark.parametrize("arch", CCS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_dcn_plugin_ptx_assembles_within_48_kib_of_shared_memory(dtype, arch):
    r = cc.check_dcn_plugin(dtype, arch, PTXAS)
    print(f"\n{cc.format_table([r])}")
    assert r.ok, r.errors
    assert r.shared + r.ptxas.static_shared <= cc.AOT_SHARED_LIMIT


_GPU_MODE_SCRIPT = """
import hashlib, json, sys
from sschsr_deploy.kernels.triton import compile_check as cc, deform_conv, patch_match, spectral_attention as sa
tuned = {"deform_conv": deform_conv._deform_conv2d_kernel, "patch_match": patch_match._patch_match_kernel,
         "gram_norms": sa._gram_norms_kernel, "attn_apply": sa._attn_apply_kernel}
picks = {tuple(p) for p in json.loads(sys.argv[1])}
cases = [c for c in cc.kernel_cases() if (c.name, c.variant) in picks]
print(json.dumps({
    "configs": {k: [str(c) for c in t.configs] for k, t in tuned.items()},
    "ptx": {c.name: hashlib.sha256(cc._compile(c, 90).asm["ptx"].encode()).hexdigest() for c in cases},
}))
"""


def test_gpu_configs_drive_autotune_and_compile_alike_outside_the_interpreter(tmp_path, monkeypatch):
    """In a process without TRITON_INTERPRET the autotuners use the GPU_CONFIGS constants, and the PTX compiled there
    equals the PTX compiled here from interpreter-defined kernels (those with @jit callees included)."""
    picks = [c for c in cc.kernel_cases(["patch_match", "gram_norms"]) if c.num_warps == 4 and "fp16" in c.variant]
    picks = [next(c for c in picks if c.name == n) for n in ("patch_match", "gram_norms")]
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "gpu-mode")}
    argv = [sys.executable, "-c", _GPU_MODE_SCRIPT, json.dumps([(c.name, c.variant) for c in picks])]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert there["configs"] == {k: [str(c) for c in v] for k, v in GPU_CONFIGS.items()}
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "here"))  # compile afresh, not from a cache
    here = {c.name: hashlib.sha256(cc._compile(c, 90).asm["ptx"].encode()).hexdigest() for c in picks}
    assert there["ptx"] == here


# ---- the checker fails when it should -------------------------------------------------------------------------------

@triton.jit
def _tiny_dot_kernel(x_ptr, BLOCK: tl.constexpr):
    idx = tl.arange(0, BLOCK)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    a = tl.load(x_ptr + idx)
    tl.store(x_ptr + idx, tl.dot(a, a))


def test_a_kernel_the_interpreter_runs_but_triton_cannot_compile_fails_the_check():
    x = torch.ones(16)
    if os.environ.get("TRITON_INTERPRET") == "1":
        _tiny_dot_kernel[(1,)](x, BLOCK=4)  # the interpreter multiplies 4×4 tiles happily
        assert torch.equal(x, torch.full((16,), 4.0))
    case = cc.KernelCase("tiny", _tiny_dot_kernel, "4×4 dot", {"x_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 4})
    r = cc.check_case(case, 80, PTXAS)
    assert not r.ok and r.ptxas is None
    assert "compile failed" in r.errors[0] and "K >= " in r.errors[0]  # tl.dot needs K ≥ 8 (16 for fp16) on a GPU


_PTX = """.version 8.0
.target sm_80
.address_size 64

.visible .entry tiny()
.reqntid 128
{
\t%s
\tret;
}
"""


def test_ptx_that_ptxas_rejects_fails_the_check():
    good = cc.check_ptx("tiny", "good", 80, _PTX % "", shared=0, num_warps=4, ptxas=PTXAS)
    assert good.ok and good.ptxas is not None and good.ptxas.spill_stores == 0
    bad = cc.check_ptx("tiny", "bad", 80, _PTX % "bogus.instruction;", shared=0, num_warps=4, ptxas=PTXAS)
    assert not bad.ok and bad.ptxas is None and bad.errors[0].startswith("ptxas: ptxas exited with")


def test_shared_memory_beyond_the_architecture_is_a_failure():
    r = cc.check_ptx("tiny", "too much smem", 80, _PTX % "", shared=163 * 1024 + 1, num_warps=4, ptxas=PTXAS)
    assert not r.ok and "shared memory" in r.errors[0]


def _report(**kw) -> cc.PtxasReport:
    return cc.PtxasReport(**{"registers": 64, "spill_stores": 0, "spill_loads": 0, "stack": 0, "static_shared": 0,
                             **kw})


def test_resource_limits():
    assert cc.resource_errors(_report(), 0, 4, 80) == []
    assert cc.resource_errors(_report(registers=255, spill_stores=800, spill_loads=800), 0, 8, 90) == []  # 256 × 256
    (e,) = cc.resource_errors(_report(registers=256), 0, 4, 90)
    assert "256 registers per thread > 255" in e
    (e,) = cc.resource_errors(_report(registers=129), 0, 16, 90)  # 136 allocated × 512 threads
    assert "69632 registers per block" in e
    (e,) = cc.resource_errors(_report(registers=16), 0, 64, 80)
    assert "2048 threads" in e
    assert cc.resource_errors(_report(), 227 * 1024, 4, 90) == []
    (e,) = cc.resource_errors(_report(), 163 * 1024, 4, 80, shared_limit=cc.AOT_SHARED_LIMIT)
    assert "> 49152" in e
    (e,) = cc.resource_errors(_report(static_shared=1024), 227 * 1024, 4, 90)  # static + dynamic
    assert "233472 bytes of shared memory per block > 232448" in e
    with pytest.raises(ValueError, match="compute capability 75"):
        cc.resource_errors(_report(), 0, 4, 75)


def test_ptxas_log_parsing():
    log = (
        "ptxas info    : 11 bytes gmem\n"
        "ptxas info    : Compiling entry function 'other' for 'sm_90a'\n"
        "ptxas info    : Used 12 registers, used 0 barriers\n"
        "ptxas info    : Compiling entry function 'kern' for 'sm_90a'\n"
        "ptxas info    : Function properties for kern\n"
        "    584 bytes stack frame, 584 bytes spill stores, 580 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers, 1024 bytes smem, 584 bytes cumulative stack size\n"
    )
    assert cc.parse_ptxas_log(log, "kern") == cc.PtxasReport(255, 584, 580, 584, 1024)
    assert cc.parse_ptxas_log(log, "other") == cc.PtxasReport(12, 0, 0, 0, 0)
    with pytest.raises(cc.PtxasError, match="not in the ptxas log"):
        cc.parse_ptxas_log(log, "missing")
