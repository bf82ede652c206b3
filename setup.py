"""Build script.

Package metadata lives in pyproject.toml. The native extension ``sschsr_deploy._C`` (C++/OpenMP and CUDA kernels in
``csrc/``) is added by the kernel work; until then the package is pure Python and every heavy operator runs its
plain-PyTorch reference from ``sschsr_deploy/ops/``.
"""

from setuptools import setup

setup()
