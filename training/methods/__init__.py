"""Registry of sparse-training methods, one module per method (``--method NAME``)."""

from __future__ import annotations

from selfish_deploy.errors import UserError

from .base import SparseMethod
from .dense import Dense
from .dsr import DSR
from .gmp import GMP
from .rigl import RigL
from .selfish import Selfish
from .set import SET
from .snfs import SNFS
from .static import Static

METHODS: dict[str, type[SparseMethod]] = {m.name: m for m in (Dense, Static, Selfish, SET, RigL, SNFS, DSR, GMP)}


def get_method(name: str) -> type[SparseMethod]:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[name]
