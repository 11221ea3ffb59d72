"""Static sparse training: a random mask at init that never changes."""

from .base import SparseMethod


class Static(SparseMethod):
    name = "static"
