"""GMP, gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): dense to sparse.

Masks start all ones (``initial_density_one``) and the smallest-magnitude active weights of each tensor
are pruned, never regrown, following the cubic schedule in sparsity ``s = 1 - density``::

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))^3,   s_i = 0,  s_f = 1 - final density

with ``t0 = round(--gmp-start * total_steps)``, ``t0 + n dt = round(--gmp-end * total_steps)`` and a
prune every ``--update-every`` steps (default 100; 0: every epoch's worth of steps,
in the loop: GMP's schedule is in steps) from ``t0``, plus one at ``t0 + n dt``.
In integers, tensor ``n`` with ``numel`` weights and final count ``f = max(1, round(d_n * numel))`` (``d_n``
from ``--density`` and ``--distribution``, as ``MaskRegistry`` computes it) keeps after the prune at
step ``t``::

    nnz_t = numel - round((numel - f) * (1 - (1 - frac)^3)),   frac = clamp((t - t0) / (n dt), 0, 1)

(Python ``round``), so every tensor lands on exactly ``f`` at ``t0 + n dt``, even when that is the last
step. ``masks.target_nnz`` follows the schedule.
"""

from __future__ import annotations

import math

import torch

from selfish_deploy.errors import UserError
from selfish_deploy.masks import erk_densities

from . import topology
from .base import SparseMethod


class GMP(SparseMethod):
    name = "gmp"
    initial_density_one = True
    default_update_every = 100
    per_epoch = False  # the schedule is in steps: --update-every 0 prunes every epoch's worth of steps, in the loop

    def __init__(self, masks, total_steps, config, generator):
        super().__init__(masks, total_steps, config, generator)
        if any(masks.target_nnz[n] != m.numel() for n, m in masks.masks.items()):
            raise UserError("gmp prunes from dense: the mask registry must be built with density 1.0 "
                            "(the trainer reads GMP.initial_density_one)")
        shapes = {n: tuple(m.shape) for n, m in masks.masks.items()}
        if config.distribution == "erk" and config.density < 1.0:
            per_tensor = erk_densities(shapes, config.density)
        else:
            per_tensor = {n: config.density for n in shapes}
        self.final_nnz = {n: max(1, round(per_tensor[n] * math.prod(s))) for n, s in shapes.items()}
        self.start = round(config.gmp_start * total_steps)
        self.end = max(1, round(config.gmp_end * total_steps))

    def fraction(self, step: int) -> float:
        if self.end <= self.start:
            return 1.0 if step >= self.end else 0.0
        return min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)

    def scheduled_nnz(self, name: str, step: int) -> int:
        """Non-zeros tensor ``name`` keeps after a prune at ``step`` (the cubic schedule, in integers)."""
        numel = self.masks.masks[name].numel()
        return numel - round((numel - self.final_nnz[name]) * (1.0 - (1.0 - self.fraction(step)) ** 3))

    def is_update_step(self, step: int) -> bool:
        if step == self.end:
            return True
        return self.start <= step < self.end and (step - self.start) % self.update_every == 0

    def update(self, step: int) -> dict | None:
        return self.prune(step)

    @torch.no_grad()
    def prune(self, step: int) -> dict:
        """Prune every tensor down to its scheduled count; the record's ``death_rate`` is the fraction of
        all non-zeros removed."""
        before = sum(self.masks.target_nnz.values())
        removed = {}
        for n, mask in self.masks.masks.items():
            k = max(0, self.masks.target_nnz[n] - self.scheduled_nnz(n, step))
            topology.remove_(self.masks, n, topology.smallest(self.masks.params[n].detach().abs(), mask, k))
            self.masks.target_nnz[n] -= k
            removed[n] = k
        return topology.record(self.masks, sum(removed.values()) / before, removed, {})
