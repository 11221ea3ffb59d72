"""Builds the compiled CPU kernels (selfish_deploy/kernels/csrc/cpu) as an optional extension.

Everything else about the package is in pyproject.toml. The library is plain C++ with OpenMP, loaded through
ctypes: no PyTorch headers, so building needs no torch. `optional=True`: without a working compiler the
install still succeeds and the runtime falls back to the PyTorch reference kernels (with a warning).
The instruction set is chosen at run time (AVX2+FMA or the baseline), so no -march=native.
"""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SRC = "selfish_deploy/kernels/csrc/cpu"
if sys.platform == "darwin":  # Apple clang: OpenMP from libomp (brew install libomp)
    omp_compile, omp_link = ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
else:
    omp_compile, omp_link = ["-fopenmp"], ["-fopenmp"]



class ParallelBuildExt(build_ext):
    """Compiles an extension's sources at the same time: each instruction set's file takes a minute or more
    (every kernel for every index and value type), and the install waits for the slowest one only."""

    def build_extension(self, ext):
        compile_one = self.compiler.compile

        def compile_all(sources, *args, **kwargs):
            with ThreadPoolExecutor(max_workers=max(1, min(len(sources), os.cpu_count() or 1))) as pool:
                return [obj for objs in pool.map(lambda src: compile_one([src], *args, **kwargs), sources)
                        for obj in objs]

        self.compiler.compile = compile_all
        try:
            super().build_extension(ext)
        finally:
            del self.compiler.compile  # back to the class's method


# SELFISH_NO_KERNELS=1 builds without them (tests/test_install.py checks the wheel's layout, not the compiler).
setup(cmdclass={"build_ext": ParallelBuildExt}, ext_modules=[] if os.environ.get("SELFISH_NO_KERNELS") == "1" else [Extension(
    "selfish_deploy.kernels._cpu",
    sources=[f"{SRC}/api.cpp", f"{SRC}/isa_avx2.cpp", f"{SRC}/isa_generic.cpp"],
    depends=[f"{SRC}/kernels.inc", f"{SRC}/matrix.h", f"{SRC}/simd.h"],
    language="c++",
    # -g0: Python's own flags ask for debug info, which made the build slower and the library 4x larger
    extra_compile_args=["-O3", "-g0", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi", *omp_compile],
    extra_link_args=omp_link,
    optional=True,
)])
