"""Registry of sparse-training methods, one module per method (``--method NAME``)."""

from __future__ import annotations

from selfish_deploy.errors import UserError

from .base import SparseMethod
from .dense import Dense
from .static import Static

METHODS: dict[str, type[SparseMethod]] = {m.name: m for m in (Dense, Static)}


def get_method(name: str) -> type[SparseMethod]:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
