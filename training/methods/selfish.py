"""Selfish-RNN (Liu et al., ICML 2021, arXiv 2101.09048): magnitude death, random growth, fixed nnz per tensor.

Each update, for every sparse tensor, the ``ceil(r * nnz)`` smallest-magnitude active weights of the
whole gate-stacked matrix die (all gates compete together, §3.2 "cell gate redistribution"), and as many
positions grow back, drawn uniformly without replacement among all the zeros left after death, the
just-died included (the authors' ``sparse_rnn_core.Masking.truncate_weights``: ``magnitude_death`` only
edits the mask, ``random_growth`` draws over ``new_mask == 0``, and ``apply_mask`` zeroes the weights after
growth). So a new position grows at zero and a just-died one drawn again keeps its value, as theirs.
Where theirs draws each zero with probability ``deficit / zeros`` (about ``k`` grow, the shortfall made up
at a later update), exactly ``k`` grow here, so each tensor's nnz stays fixed. The per-gate densities
drift towards the gates that need weights.

``--regrow-exclude-dead`` (ours before issue 15) keeps the just-died out of growth; the removal count is
then capped at the number of inactive positions (matters only above density 0.5 with a high death rate).

The death rate ``r`` anneals by a cosine from ``--death-rate`` to ``--death-rate-final`` over the planned
steps (§3.2; theirs: ``CosineDecay`` stepped every batch), evaluated at the step just taken. Updates run
once per epoch after validation (theirs: ``at_end_of_epoch``) unless ``--update-every``.
"""

from __future__ import annotations

import math

import torch

from selfish_deploy.families import get_family

from . import topology
from .base import SparseMethod


class Selfish(SparseMethod):
    name = "selfish"

    @property
    def initial_death_rate(self) -> float:
        rate = getattr(self.config, "death_rate", None)
        if rate is not None:
            return rate
        return get_family(getattr(self.config, "arch", "lstm")).death_rate  # the family's (paper: 0.8 for LSTM)

    def death_rate(self, step: int) -> float:
        return topology.cosine_death_rate(step, self.total_steps, self.initial_death_rate,
                                          self.config.death_rate_final)

    def update(self, step: int) -> dict | None:
        return self.rewire(self.death_rate(step))

    @torch.no_grad()
    def rewire(self, rate: float) -> dict:
        """One update at death rate ``rate``; returns the topology record."""
        exclude_dead = getattr(self.config, "regrow_exclude_dead", False)
        removed, grown = {}, {}
        for n, mask in self.masks.masks.items():
            nnz, numel = self.masks.target_nnz[n], mask.numel()
            k = min(math.ceil(rate * nnz), numel - nnz if exclude_dead else nnz)
            flat = self.masks.params[n].view(-1)
            dead = topology.smallest(flat.detach().abs(), mask, k)
            values = flat[dead].clone()  # (k,) what a just-died weight drawn again keeps
            topology.remove_(self.masks, n, dead)
            allowed = ~mask
            if exclude_dead:
                allowed.view(-1)[dead] = False
            new = topology.random_choice(allowed, k, self.generator)
            topology.grow_(self.masks, n, new)
            if not exclude_dead:
                back = torch.isin(dead, new)  # just died and drawn again: the value stays (theirs)
                flat[dead[back]] = values[back]
            removed[n] = grown[n] = k
        return topology.record(self.masks, rate, removed, grown)
