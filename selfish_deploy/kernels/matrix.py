"""A weight matrix as the kernels take it: the export's CSR arrays as stored, or a dense fp32 tensor.

    CSR (rows, cols):  crow_indices int32 (rows+1) | col_indices uint16 or int32 (nnz) | values fp32/fp16/bf16

Indices and values stay in the stored dtypes (no widening at load: uint16 columns and fp16 values halve the
memory); the compiled kernels read them directly. The PyTorch reference needs int32 indices and fp32 values,
and builds that copy only when it is used (the fallback, or a device other than the CPU).
"""

from __future__ import annotations

import ctypes
import warnings
from functools import cached_property

import torch

from ..csr import CSR


DENSE_GROUP = 32  # rows per group of the dense batch-1 copy (matrix.h)
VALUE_TYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # sd_matrix.value_type


def _library(what: str):
    """The compiled library, which builds the batch-1 layouts (``what`` names the one asked for)."""
    from .loader import load  # lazily: loading it is only needed once a layout is

    lib, _ = load()
    if lib is None:
        raise RuntimeError(f"{what} is built by the compiled kernels")
    return lib


def sell_sigma(rows: int, block_rows: int) -> int:
    """Rows per sorting window of the SELL layout: 256 over a whole matrix (the decoder's log-softmax chunks,
    which windows must nest in), 32 within gate blocks (the batch-1 recurrence gives each thread whole windows
    of units: finer keeps the threads' shares even for small layers). The reference model's padding: 17% at
    density 0.1 unsorted, 4% sorted in windows of 32, 1% in 256 (8-9%, 2.5% and 0.5% at 0.33). 256 against
    64 over the decoder: the step 1.02x faster (in-process A/B)."""
    return 256 if block_rows == rows else 32


class Matrix:
    """One (rows, cols) weight: ``csr`` or ``dense`` is set, never both."""

    def __init__(self, csr: CSR | None = None, dense: torch.Tensor | None = None, device: str | torch.device = "cpu",
                 validated: bool = False):
        """``validated``: the CSR was checked already (``load_export`` does), so skip the O(nnz) check."""
        if (csr is None) == (dense is None):
            raise ValueError("give exactly one of csr and dense")
        self.device = torch.device(device)
        if csr is not None:
            if not validated:
                csr.validate()
            self.shape = tuple(csr.shape)
            self.crow = csr.crow_indices.contiguous()
            self.col = csr.col_indices.contiguous()
            self.values = csr.values.contiguous()
            self.dense = None
            self.nnz = csr.nnz
        else:
            if dense.dim() != 2:
                raise ValueError(f"a weight matrix must be 2-D, got {tuple(dense.shape)}")
            self.shape = tuple(dense.shape)
            self.dense = dense.to(self.device, torch.float32).contiguous()
            self.nnz = dense.numel()
        self._sell: dict[int, tuple] = {}
        self._dense1: dict[int, torch.Tensor] = {}
        self._bp: dict[int, tuple] = {}
        self._perm: dict[int, torch.Tensor] = {}
        self._struct: dict[int, object] = {}  # ctypes views by SELL block height (compiled.py)

    @property
    def is_sparse(self) -> bool:
        return self.dense is None

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    def nbytes(self) -> int:
        if self.dense is not None:
            return self.dense.numel() * 4
        parts = [self.crow, self.col, self.values, *(t for sell in self._sell.values() for t in sell[:3]),
                 *self._perm.values(), *self._dense1.values(), *(t for bp in self._bp.values() for t in bp)]
        return sum(t.numel() * t.element_size() for t in parts)

    def sell(self, block_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The CSR as SELL-8-sigma for batch-1 products (kernels/csrc/cpu/matrix.h): within blocks of
        ``block_rows`` (a gate's rows, for a recurrent matrix), windows of ``sell_sigma(block_rows)`` rows
        sorted by length, then slices of 8 positions padded to the slice's longest row, entry i of the 8 rows
        stored together::

            positions p0..p0+7 of a slice:  [v(p0,0) .. v(p0+7,0) | v(p0,1) .. v(p0+7,1) | ...]   (0 where a row ended)

        Returns (slice offsets int64, column indices, values, perm int32: the row at each position), indices
        and values in the stored dtypes; built once per height."""
        if block_rows not in self._sell:
            self._sell[block_rows] = self._build_sell(block_rows)
        return self._sell[block_rows]

    def sell_perm(self, block_rows: int) -> torch.Tensor:
        """The SELL positions' rows (int32): each window of ``sell_sigma`` rows within blocks of ``block_rows``
        sorted by length, longest first; shared by the SELL-8 and block-permute copies. Built once per height."""
        if block_rows not in self._perm:
            rows = self.shape[0]
            if rows % block_rows:
                raise ValueError(f"block of {block_rows} rows does not divide {rows} rows")
            lib, p = _library("the SELL-8 layout"), ctypes.c_void_p
            perm = torch.empty(rows, dtype=torch.int32)
            if lib.sd_sell_perm(p(self.crow.data_ptr()), rows, block_rows, sell_sigma(rows, block_rows),
                                p(perm.data_ptr())):
                raise ValueError(f"no SELL layout for {rows} rows in blocks of {block_rows}")
            self._perm[block_rows] = perm
        return self._perm[block_rows]

    def _build_sell(self, bh: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self.shape[0]
        lib, p = _library("the SELL-8 layout"), ctypes.c_void_p
        perm = self.sell_perm(bh)
        n_slices = (rows // bh) * ((bh + 7) // 8)
        ptr = torch.zeros(n_slices + 1, dtype=torch.long)
        lib.sd_sell_offsets(p(self.crow.data_ptr()), p(perm.data_ptr()), rows, bh, p(ptr.data_ptr()))
        total = int(ptr[-1])
        col = torch.zeros(total, dtype=self.col.dtype)
        val = torch.zeros(total, dtype=self.values.dtype)
        lib.sd_sell_fill(p(self.crow.data_ptr()), p(perm.data_ptr()), p(self.col.data_ptr()), p(self.values.data_ptr()),
                         rows, bh, self.col.element_size(), self.values.element_size(), p(ptr.data_ptr()),
                         p(col.data_ptr()), p(val.data_ptr()))
        return ptr, col, val, perm

    def block_permute(self, block_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block-permute copy for batch-1 products on AVX-512 CPUs (kernels/csrc/cpu/matrix.h, ``bp_*``):
        the SELL positions (``sell_perm(block_rows)``) in slices of 16, each slice's entries grouped by blocks
        of 32 columns, 16 lanes of (column within the block uint8, value in the stored dtype) per entry::

            slice s, column block b:  depth[s, b] entries of [col % 32 of lanes 0..15 | values of lanes 0..15]

        Returns (slice offsets int64, depth uint8 (slices, ceil(cols / 32)), indices uint8, values); built
        once per height. Padding to the deepest lane of each block makes it 1.18x / 1.59x / 1.94x the SELL copy's
        bytes on the reference model's W_hh at density 0.33 / 0.1 / 0.05."""
        if block_rows not in self._bp:
            rows, cols = self.shape
            perm = self.sell_perm(block_rows)
            lib, p = _library("the block-permute copy"), ctypes.c_void_p
            n_slices = rows // block_rows * -(-block_rows // 16)
            nb = -(-cols // 32)
            depth = torch.zeros(n_slices, nb, dtype=torch.uint8)
            ptr = torch.zeros(n_slices + 1, dtype=torch.long)
            ib, vb = self.col.element_size(), self.values.element_size()
            if lib.sd_bp_offsets(p(self.crow.data_ptr()), p(perm.data_ptr()), p(self.col.data_ptr()), ib, rows, cols,
                                 block_rows, p(depth.data_ptr()), p(ptr.data_ptr())):
                raise ValueError(f"no block-permute copy of {rows} rows in blocks of {block_rows}")
            total = int(ptr[-1]) * 16
            idx = torch.zeros(total, dtype=torch.uint8)
            val = torch.zeros(total, dtype=self.values.dtype)
            lib.sd_bp_fill(p(self.crow.data_ptr()), p(perm.data_ptr()), p(self.col.data_ptr()), ib,
                           p(self.values.data_ptr()), vb, rows, cols, block_rows, p(depth.data_ptr()),
                           p(ptr.data_ptr()), p(idx.data_ptr()), p(val.data_ptr()))
            self._bp[block_rows] = (ptr, depth, idx, val)
        return self._bp[block_rows]

    def dense_batch1(self, block_rows: int) -> torch.Tensor:
        """The dense batch-1 copy (kernels/csrc/cpu/matrix.h, ``sell_dense``): within blocks of ``block_rows``
        rows, groups of ``DENSE_GROUP`` rows (the last zero-padded), each column-major: (groups, cols, 32) fp32.
        Its zeros add exact zeros, so it gives the SELL copy's sums bit for bit; built once per height."""
        if block_rows not in self._dense1:
            rows, cols = self.shape
            if rows % block_rows:
                raise ValueError(f"block of {block_rows} rows does not divide {rows} rows")
            lib, p = _library("the dense batch-1 copy"), ctypes.c_void_p
            copy = torch.zeros(rows // block_rows * -(-block_rows // DENSE_GROUP), cols, DENSE_GROUP)
            if lib.sd_dense1_fill(p(self.crow.data_ptr()), p(self.col.data_ptr()), self.col.element_size(),
                                  p(self.values.data_ptr()), VALUE_TYPES[self.values.dtype], rows, cols, block_rows,
                                  p(copy.data_ptr())):
                raise ValueError(f"no dense batch-1 copy of {rows} rows in blocks of {block_rows}")
            self._dense1[block_rows] = copy
        return self._dense1[block_rows]

    @cached_property
    def torch_weight(self) -> torch.Tensor:
        """The weight for PyTorch ops on ``device``: a ``sparse_csr_tensor`` (int32, fp32) or the dense tensor."""
        if self.dense is not None:
            return self.dense
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                self.crow.to(self.device), self.col.to(torch.int32).to(self.device),
                self.values.to(self.device, torch.float32), self.shape, check_invariants=False)

    def to_dense(self) -> torch.Tensor:
        if self.dense is not None:
            return self.dense
        return CSR(self.crow, self.col, self.values, self.shape).to_dense(torch.float32).to(self.device)
