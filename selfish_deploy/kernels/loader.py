"""Find and load the compiled CPU kernels (``_cpu*.so``, built by ``pip install``), or say why not.

``SELFISH_KERNELS=reference`` forces the PyTorch reference (for tests and comparisons). A missing or broken
library is a warning, once, never an error: every op has its reference version.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import warnings
from functools import lru_cache
from pathlib import Path

import torch  # noqa: F401  loaded first: the kernels then share PyTorch's OpenMP runtime (one thread pool)

ABI_VERSION = 10
HERE = Path(__file__).resolve().parent


def library_path() -> Path | None:
    """The built library next to this file (in-place or installed), whatever the Python ABI suffix."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / f"_cpu{suffix}"
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def load() -> tuple[ctypes.CDLL | None, str]:
    """(library or None, a line saying what was loaded or why not)."""
    if os.environ.get("SELFISH_KERNELS", "").lower() == "reference":
        return None, "disabled by SELFISH_KERNELS=reference"
    path = library_path()
    if path is None:
        reason = ("compiled CPU kernels not built (reinstall with a C++ compiler: pip install -e .); "
                  "using the PyTorch reference kernels, which are slower")
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
        return None, "not built"
    try:
        lib = open_library(path)
    except (OSError, AttributeError) as e:
        warnings.warn(f"compiled CPU kernels at {path} unusable ({e}); using the PyTorch reference kernels",
                      RuntimeWarning, stacklevel=3)
        return None, f"unusable: {e}"
    return lib, f"loaded {path.name}"


def open_library(path: str | Path) -> ctypes.CDLL:
    """The library at ``path`` with its layout builders' signatures set; OSError if its ABI is not this one's."""
    lib = ctypes.CDLL(str(path))
    if lib.sd_abi_version() != ABI_VERSION:
        raise OSError(f"ABI version {lib.sd_abi_version()}, expected {ABI_VERSION} (rebuild: pip install -e .)")
    for name in ("sd_isa", "sd_build"):
        getattr(lib, name).restype = ctypes.c_char_p
    vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.sd_sell_perm.argtypes = [vp, i64, i64, i64, vp]
    lib.sd_sell_offsets.argtypes = [vp, vp, i64, i64, vp]
    lib.sd_sell_fill.argtypes = [vp, vp, vp, vp, i64, i64, i32, i32, vp, vp, vp]
    lib.sd_dense1_fill.argtypes = [vp, vp, i32, vp, i32, i64, i64, i64, vp]
    lib.sd_bp_offsets.argtypes = [vp, vp, vp, i32, i64, i64, i64, vp, vp]
    lib.sd_bp_fill.argtypes = [vp, vp, vp, i32, vp, i32, i64, i64, i64, vp, vp, vp, vp]
    return lib
