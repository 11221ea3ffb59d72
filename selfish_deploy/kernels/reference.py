"""Plain PyTorch sparse ops: the reference every faster kernel is checked against."""

from __future__ import annotations

import torch


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for x (N, in) and a dense or CSR weight (out, in)."""
    if weight.layout == torch.sparse_csr:
        y = torch.sparse.mm(weight, x.t()).t()  # (out, in) @ (in, N) -> (out, N)
    else:
        y = x @ weight.t()
    return y if bias is None else y + bias


def csr_gather_rows(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Dense rows ``ids`` of a CSR matrix, without densifying the rest::

        ids = [2, 0]   crow = [0, 2, 3, 5]   -> row 2 is values[3:5] at col_indices[3:5]
    """
    crow, col, val = weight.crow_indices(), weight.col_indices(), weight.values()
    start, end = crow[ids].long(), crow[ids + 1].long()
    counts = end - start
    out = torch.zeros(ids.numel(), weight.shape[1], dtype=val.dtype, device=val.device)
    if int(counts.sum()) == 0:
        return out
    rows = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), counts)
    offsets = torch.cumsum(counts, 0) - counts  # first output slot of each row
    pos = torch.arange(rows.numel(), device=ids.device) - offsets[rows] + start[rows]
    out[rows, col[pos].long()] = val[pos]
    return out
