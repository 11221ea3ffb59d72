"""SET (Mocanu et al., Nature Communications 2018): sign-aware magnitude death, random growth, fixed nnz.

SET removes a fraction zeta of the positive weights (the smallest) and the same fraction of the negative
weights (the largest, i.e. closest to zero) rather than the smallest magnitudes overall. Here, per tensor:
``ceil(zeta * n_nonneg)`` of the active weights ``>= 0`` (exact zeros first, then the smallest
positives) and ``ceil(zeta * n_neg)`` of the active weights ``< 0`` closest to zero die, so about
``zeta * nnz`` in all. The same number of positions grows back uniformly at random among all inactive
ones, just-removed included (as in Mocanu's code), at zero; nnz per tensor stays fixed. Full tensors
(``--distribution erk`` can make some) are left alone.

zeta is constant, ``--death-rate`` (default 0.3, the paper's value); updates run once per epoch unless
``--update-every``. Erdős–Rényi initial densities are ``--distribution erk``.
"""

from __future__ import annotations

import math

import torch

from . import topology
from .base import SparseMethod


class SET(SparseMethod):
    name = "set"
    default_death_rate = 0.3

    def update(self, step: int) -> dict | None:
        return self.rewire(self.initial_death_rate)

    @torch.no_grad()
    def rewire(self, zeta: float) -> dict:
        """One update removing fraction ``zeta`` of each sign; returns the topology record."""
        removed, grown = {}, {}
        for n, mask in self.masks.masks.items():
            if self.masks.target_nnz[n] == mask.numel():
                continue  # a full tensor has nowhere else to grow: rewiring would only reset weights
            w = self.masks.params[n].detach()
            nonneg, neg = mask & (w >= 0), mask & (w < 0)
            k_pos = math.ceil(zeta * int(nonneg.sum()))
            k_neg = math.ceil(zeta * int(neg.sum()))
            dead = torch.cat([topology.smallest(w.abs(), nonneg, k_pos), topology.smallest(w.abs(), neg, k_neg)])
            topology.remove_(self.masks, n, dead)
            k = k_pos + k_neg
            topology.grow_(self.masks, n, topology.random_choice(~mask, k, self.generator))
            removed[n] = grown[n] = k
        return topology.record(self.masks, zeta, removed, grown)
