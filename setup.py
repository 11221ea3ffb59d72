"""Builds the compiled CPU kernels (selfish_deploy/kernels/csrc/cpu) as an optional extension.

Everything else about the package is in pyproject.toml. The library is plain C++ with OpenMP, loaded through
ctypes: no PyTorch headers, so building needs no torch. `optional=True`: without a working compiler the
install still succeeds and the runtime falls back to the PyTorch reference kernels (with a warning).
The instruction set is chosen at run time (AVX2+FMA or the baseline), so no -march=native.
"""

import os
import sys

from setuptools import Extension, setup

SRC = "selfish_deploy/kernels/csrc/cpu"
if sys.platform == "darwin":  # Apple clang: OpenMP from libomp (brew install libomp)
    omp_compile, omp_link = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
else:
    omp_compile, omp_link = ["-fopenmp"], ["-fopenmp"]

# SELFISH_NO_KERNELS=1 builds without them (tests/test_install.py checks the wheel's layout, not the compiler).
setup(ext_modules=[] if os.environ.get("SELFISH_NO_KERNELS") == "1" else [Extension(
    "selfish_deploy.kernels._cpu",
    sources=[f"{SRC}/api.cpp", f"{SRC}/isa_avx2.cpp", f"{SRC}/isa_generic.cpp"],
    depends=[f"{SRC}/kernels.inc", f"{SRC}/matrix.h", f"{SRC}/simd.h"],
    language="c++",
    extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi", *omp_compile],
    extra_link_args=omp_link,
    optional=True,
)])
