"""Selfish-RNN (Liu et al., ICML 2021, arXiv 2101.09048): magnitude death, random growth, fixed nnz per tensor.

Each update, for every sparse tensor, the ``ceil(r * nnz)`` smallest-magnitude active weights of the
whole gate-stacked matrix die (all gates compete together, §3.2 "cell gate redistribution"), and as many
inactive positions, drawn uniformly and excluding those that just died, grow back at zero. Each tensor's
nnz stays fixed; the per-gate densities drift towards the gates that need weights.

The death rate ``r`` anneals by a cosine from ``--death-rate`` to ``--death-rate-final`` over the planned
steps (§3.2), evaluated at the step just taken. Updates run once per epoch unless ``--update-every``.
The removal count is capped at the number of inactive positions, so regrowth never needs a position
that just died (matters only above density 0.5 with a high death rate; a dense tensor never changes).
"""

from __future__ import annotations

import math

import torch

from . import topology
from .base import SparseMethod


class Selfish(SparseMethod):
    name = "selfish"

    @property
    def initial_death_rate(self) -> float:
        rate = getattr(self.config, "death_rate", None)
        if rate is not None:
            return rate
        return 0.8 if getattr(self.config, "arch", "lstm") == "lstm" else 0.5  # paper: 0.8 for LSTM

    def death_rate(self, step: int) -> float:
        return topology.cosine_death_rate(step, self.total_steps, self.initial_death_rate,
                                          self.config.death_rate_final)

    def after_step(self, step: int) -> dict | None:
        if not self.is_update_step(step):
            return None
        return self.rewire(self.death_rate(step))

    @torch.no_grad()
    def rewire(self, rate: float) -> dict:
        """One update at death rate ``rate``; returns the topology record."""
        removed, grown = {}, {}
        for n, mask in self.masks.masks.items():
            nnz, numel = self.masks.target_nnz[n], mask.numel()
            k = min(math.ceil(rate * nnz), numel - nnz)
            dead = topology.smallest(self.masks.params[n].detach().abs(), mask, k)
            topology.remove_(self.masks, n, dead)
            allowed = ~mask
            allowed.view(-1)[dead] = False  # a weight that just died does not come back in this update
            topology.grow_(self.masks, n, topology.random_choice(allowed, k, self.generator))
            removed[n] = grown[n] = k
        return topology.record(self.masks, rate, removed, grown)
