"""Compressed sparse row (CSR) encoding of a masked weight matrix.

A (rows, cols) matrix with ``nnz`` alive weights is three 1-D tensors::

    W = [[0 a 0 b]      crow_indices (int32, rows+1)  = [0, 2, 3, 5]   row r is values[crow[r]:crow[r+1]]
         [c 0 0 0]      col_indices  (uint16 | int32) = [1, 3, 0, 1, 2]
         [0 d e 0]]     values       (fp32|fp16|bf16) = [a, b, c, d, e]

The alive set comes from the *mask*, not from ``values != 0``: a regrown weight that is still exactly
zero stays in the CSR, so nnz always equals the mask's count. Column indices are uint16 when the matrix
has at most 65,536 columns (half the bytes), else int32.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

UINT16_MAX_COLS = 1 << 16
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def index_dtype(cols: int) -> torch.dtype:
    return torch.uint16 if cols <= UINT16_MAX_COLS else torch.int32


@dataclass
class CSR:
    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @classmethod
    def from_masked(cls, weight: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> "CSR":
        """Encode the alive entries of ``weight`` (those under ``mask``), row-major."""
        if weight.shape != mask.shape or weight.dim() != 2:
            raise ValueError(f"weight {tuple(weight.shape)} and mask {tuple(mask.shape)} must be equal 2-D shapes")
        mask = mask.bool().cpu()
        rows, cols = mask.shape
        crow = torch.zeros(rows + 1, dtype=torch.int64)
        crow[1:] = mask.sum(dim=1).cumsum(0)
        col = mask.nonzero()[:, 1]  # nonzero() is row-major, so columns come sorted within each row
        return cls(crow.to(torch.int32), col.to(index_dtype(cols)),
                   weight.detach().cpu()[mask].to(dtype), (rows, cols))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> "CSR":
        return cls.from_masked(weight, weight != 0, dtype)

    def validate(self) -> None:
        """Raise ``ValueError`` unless the three arrays form a well-formed CSR matrix of ``shape``:
        int32 row pointers, uint16/int32 column indices strictly increasing within each row, 1-D values."""
        rows, cols = self.shape
        if self.crow_indices.dtype != torch.int32 or self.col_indices.dtype not in (torch.uint16, torch.int32):
            raise ValueError(f"index dtypes {self.crow_indices.dtype}/{self.col_indices.dtype}, "
                             "expected int32 row pointers and uint16|int32 column indices")
        if self.values.dim() != 1 or not self.values.is_floating_point():
            raise ValueError(f"values must be a 1-D float tensor, got {self.values.dtype} {tuple(self.values.shape)}")
        crow = self.crow_indices.long()
        if crow.dim() != 1 or crow.numel() != rows + 1:
            raise ValueError(f"crow_indices has {crow.numel()} entries, expected rows+1 = {rows + 1}")
        if int(crow[0]) != 0 or int(crow[-1]) != self.nnz or bool((crow[1:] < crow[:-1]).any()):
            raise ValueError("crow_indices must start at 0, be non-decreasing and end at nnz")
        if self.col_indices.dim() != 1 or self.col_indices.numel() != self.nnz:
            raise ValueError(f"{self.col_indices.numel()} column indices for {self.nnz} values")
        col = self.col_indices.long()
        if self.nnz and (int(col.min()) < 0 or int(col.max()) >= cols):
            raise ValueError(f"column index out of range for {cols} columns")
        # Within a row columns must rise strictly (no duplicates): compare neighbours except across rows.
        rising = col[1:] > col[:-1]
        row_start = torch.zeros(self.nnz, dtype=torch.bool)
        row_start[crow[1:-1][crow[1:-1] < self.nnz]] = True
        if self.nnz > 1 and not bool((rising | row_start[1:]).all()):
            raise ValueError("column indices must be strictly increasing within each row")

    def row_ids(self) -> torch.Tensor:
        """Row index of every stored value (COO rows)."""
        counts = self.crow_indices[1:].long() - self.crow_indices[:-1].long()
        return torch.repeat_interleave(torch.arange(self.shape[0]), counts)

    def mask(self) -> torch.Tensor:
        m = torch.zeros(self.shape, dtype=torch.bool)
        m[self.row_ids(), self.col_indices.long()] = True
        return m

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=dtype or self.values.dtype)
        out[self.row_ids(), self.col_indices.long()] = self.values.to(out.dtype)
        return out

    def to_torch(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """A ``torch.sparse_csr_tensor`` (int32 indices) for the runtime's kernels."""
        self.validate()  # the kernels trust these invariants, so check them once here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                self.crow_indices.to(device=device, dtype=torch.int32),
                self.col_indices.to(torch.int32).to(device),
                self.values.to(device=device, dtype=dtype or self.values.dtype),
                self.shape,
                check_invariants=False,
            )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.crow_indices, self.col_indices, self.values))
