"""Dense training: every mask is all ones (density is forced to 1.0)."""

from .base import SparseMethod


class Dense(SparseMethod):
    name = "dense"
    dense = True
