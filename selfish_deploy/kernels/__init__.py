"""Sparse kernels used by the runtime, with one dispatch point per op.

Every op accepts a weight that is either a dense tensor or a ``torch.sparse_csr_tensor``; the plain
PyTorch versions in ``reference.py`` are the correctness baseline that faster kernels are tested against.
"""

import torch

from .reference import csr_gather_rows, linear

__all__ = ["linear", "csr_gather_rows", "embedding"]


def embedding(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` (any shape) of a (V, E) weight, dense result of shape ``ids.shape + (E,)``."""
    if weight.layout == torch.sparse_csr:
        return csr_gather_rows(weight, ids.reshape(-1)).view(*ids.shape, weight.shape[1])
    return weight[ids]
