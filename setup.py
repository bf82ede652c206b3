"""Build script: the native extension ``sschsr_deploy._C`` (package metadata lives in pyproject.toml).

torch ≥ 2.14 headers need C++20, so the extension compiles as C++20; the kernels themselves stay C++17 (the CMake build
of the torch-free library uses C++17). Sources are found by convention, so adding a kernel needs no edit here:

- ``csrc/cpu/*.cpp``         torch-free CPU kernels (C++17 + OpenMP), also built by CMakeLists.txt;
- ``csrc/cuda/*.cu``         torch-free CUDA kernels, also built by CMakeLists.txt;
- ``csrc/torch/*.cpp``       torch bindings (``TORCH_LIBRARY_FRAGMENT(sschsr, …)`` schemas + CPU implementations);
- ``csrc/torch/*_cuda.cpp``  torch bindings of the CUDA kernels (compiled only in CUDA builds).

CUDA kernels are compiled when a CUDA toolkit and a CUDA build of torch are present; ``SSCHSR_BUILD_CUDA=0/1`` forces
the choice; ``SSCHSR_BUILD_NATIVE=0`` skips the extension (pure-Python install). Build with
``pip install --no-build-isolation -e .`` so the installed torch is used (torch is not a build requirement on purpose:
pip would otherwise fetch another one). Without torch the package installs pure-Python and the
operators fall back to their plain-PyTorch references.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CUDA_ARCHS = os.environ.get("SSCHSR_CUDA_ARCHS", "80;90").split(";")


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _want_cuda(torch) -> bool:
    flag = os.environ.get("SSCHSR_BUILD_CUDA")
    if flag is not None:
        return flag not in ("0", "false", "False", "")
    return torch.version.cuda is not None and shutil.which("nvcc", path=os.path.join(os.environ["CUDA_HOME"], "bin"))


def _pip_cuda_include() -> list[str]:
    """Headers of the pip CUDA runtime wheels (cu13): nvcc needs them beside the system toolkit's."""
    try:
        import nvidia  # noqa: F401  (namespace package installed with the CUDA build of torch)
    except ImportError:
        return []
    found = []
    for base in nvidia.__path__:
        found += [p for p in glob.glob(os.path.join(base, "cu*", "include")) if os.path.isdir(p)]
    return found


def extensions():
    if os.environ.get("SSCHSR_BUILD_NATIVE", "1") in ("0", "false", "False"):
        return [], {}
    cpu_sources = _rel("csrc/cpu/*.cpp")
    binding_sources = [p for p in _rel("csrc/torch/*.cpp") if not p.endswith("_cuda.cpp")]
    if not cpu_sources and not binding_sources:
        return [], {}
    # torch guesses /usr/local for the toolkit; on our machines it lives in /usr/local/cuda.
    if os.path.isdir("/usr/local/cuda"):
        os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("sschsr-deploy: torch not importable at build time; installing without the native extension",
              file=sys.stderr)
        return [], {}
    os.environ.setdefault("CUDA_HOME", cpp_extension.CUDA_HOME or "/usr/local/cuda")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"]
    link_flags = ["-fopenmp"]
    sources = cpu_sources + binding_sources
    if _want_cuda(torch):
        nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
        for arch in CUDA_ARCHS:
            nvcc_flags += [f"-gencode=arch=compute_{arch},code=sm_{arch}"]
        nvcc_flags += [f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"]  # PTX for newer GPUs
        ext = cpp_extension.CUDAExtension(
            "sschsr_deploy._C",
            sources + _rel("csrc/cuda/*.cu") + _rel("csrc/torch/*_cuda.cpp"),
            include_dirs=include_dirs + _pip_cuda_include(),
            define_macros=[("SSCHSR_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    else:
        ext = cpp_extension.CppExtension(
            "sschsr_deploy._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
        )
    cuda = any(src.endswith(".cu") for src in ext.sources)
    print(f"sschsr-deploy: building sschsr_deploy._C from {len(ext.sources)} sources "
          f"({'CPU + CUDA kernels for sm_' + ', sm_'.join(CUDA_ARCHS) if cuda else 'CPU kernels only'}): "
          "a few minutes on 2 cores", file=sys.stderr)
    for src in ext.sources:
        print(f"  {src}", file=sys.stderr)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
