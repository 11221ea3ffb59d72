"""A weight matrix as the kernels take it: the export's CSR arrays as stored, or a dense fp32 tensor.

    CSR (rows, cols):  crow_indices int32 (rows+1) | col_indices uint16 or int32 (nnz) | values fp32/fp16/bf16

Indices and values stay in the stored dtypes (no widening at load: uint16 columns and fp16 values halve the
memory); the compiled kernels read them directly. The PyTorch reference needs int32 indices and fp32 values,
and builds that copy only when it is used (the fallback, or a device other than the CPU).
"""

from __future__ import annotations

import warnings
from functools import cached_property

import torch

from ..csr import CSR


class Matrix:
    """One (rows, cols) weight: ``csr`` or ``dense`` is set, never both."""

    def __init__(self, csr: CSR | None = None, dense: torch.Tensor | None = None, device: str | torch.device = "cpu"):
        if (csr is None) == (dense is None):
            raise ValueError("give exactly one of csr and dense")
        self.device = torch.device(device)
        if csr is not None:
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
        self._struct = None  # ctypes view, built by the compiled kernels on first use

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
        return sum(t.numel() * t.element_size() for t in (self.crow, self.col, self.values))

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
