"""RigL (Evci et al., ICML 2020): magnitude death, growth by largest dense-gradient magnitude, fixed nnz.

Every ``--update-every`` steps (default 100, the paper's ΔT) up to ``--stop-fraction`` of the planned
steps (default 0.75), for every sparse tensor the ``ceil(a_t * nnz)`` smallest-magnitude active weights
die and as many positions with the largest ``|grad|`` among the inactive ones (just-dropped included, as
in RigL's code) grow at zero. The drop fraction decays as in the paper,
``a_t = a/2 * (1 + cos(pi * t / T_end))`` with ``a = --death-rate`` (default 0.3) and
``T_end = stop_fraction * total_steps``.

The gradient is the dense one of the batch whose step triggers the update: ``before_step`` copies
``|p.grad|`` (the loop masks gradients right after it) only when an update follows the coming step,
and the update uses and drops it. With ``--update-every 0`` the update runs at the end of the epoch,
after validation, on the last batch's gradients. Nothing needs checkpointing: the copy lives from an
update's batch to that update, and checkpoints are written after the epoch's update.
"""

from __future__ import annotations

import math

import torch

from . import topology
from .base import SparseMethod


class RigL(SparseMethod):
    name = "rigl"
    default_update_every = 100
    default_death_rate = 0.3

    def __init__(self, masks, total_steps, config, generator):
        super().__init__(masks, total_steps, config, generator)
        self.grad_scores: dict[str, torch.Tensor] | None = None

    @property
    def stop_step(self) -> int:
        return int(self.config.stop_fraction * self.total_steps)

    def update_allowed(self, step: int) -> bool:
        return super().update_allowed(step) and step <= self.stop_step

    def death_rate(self, step: int) -> float:
        return topology.cosine_death_rate(step, self.stop_step, self.initial_death_rate, 0.0)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        if self.update_follows(step + 1):  # in the loop or (--update-every 0) at this epoch's end
            self.store_gradients()

    @torch.no_grad()
    def store_gradients(self) -> None:
        """Keep ``|grad|`` of every sparse tensor (zeros where a tensor got no gradient)."""
        self.grad_scores = {
            n: (p.grad.detach().abs().clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in self.masks.params.items()
        }

    def update(self, step: int) -> dict | None:
        return self.rewire(self.death_rate(step))

    @torch.no_grad()
    def rewire(self, rate: float) -> dict:
        """One update dropping fraction ``rate``; needs ``store_gradients()`` from this batch."""
        if self.grad_scores is None:
            raise RuntimeError("rigl: no gradients stored; before_step must run before an update step")
        removed, grown = {}, {}
        for n, mask in self.masks.masks.items():
            nnz = self.masks.target_nnz[n]
            if nnz == mask.numel():
                continue  # a full tensor has nowhere else to grow
            k = math.ceil(rate * nnz)
            dead = topology.smallest(self.masks.params[n].detach().abs(), mask, k)
            topology.remove_(self.masks, n, dead)
            topology.grow_(self.masks, n, topology.largest(self.grad_scores[n], ~mask, k))
            removed[n] = grown[n] = k
        self.grad_scores = None
        return topology.record(self.masks, rate, removed, grown)
