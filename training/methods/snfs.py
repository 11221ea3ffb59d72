"""SNFS, sparse momentum (Dettmers & Zettlemoyer 2019, "Sparse Networks from Scratch").

Each update (once per epoch unless ``--update-every``), at death rate ``r`` (cosine from
``--death-rate``, default 0.5, to ``--death-rate-final``):

1. every tensor's share of the regrowth is the mean ``|momentum|`` of its active weights, normalised
   over tensors (momentum redistribution);
2. every tensor loses its ``ceil(r * nnz)`` smallest-magnitude active weights (at most ``nnz - 1``: a
   tensor never empties);
3. the total removed is split over tensors by share (``topology.allocate``: exact integers, no tensor
   past its numel, overflow spread over the others) and each tensor grows its largest-``|momentum|``
   inactive positions (just-removed included, as in Dettmers' code) at zero.

Per-tensor nnz moves, so ``masks.target_nnz`` is updated; the total stays exact.

Momentum: an exponential mean of the dense gradients kept here, ``m = 0.9 m + 0.1 g`` updated in every
``before_step`` (after clipping, the gradient the optimizer steps with). It is SNFS's own signal, so SNFS
trains under the same optimizer as every other method, without momentum unless ``--momentum`` asks
(issue 15; it used to force momentum 0.9, at the learning rates of 20-40 the recipes use about 10x the
step of the other methods). The optimizer's momentum buffer could not serve anyway: gradients are masked
before the optimizer step, so that buffer is zero at inactive positions, exactly where growth needs a
signal. The authors' code (``sparse_rnn_core.Masking.get_momentum_for_weight``) reads the optimizer's
``momentum_buffer``, which their ``torch.optim.SGD(lr, weight_decay)`` in ``main.py`` never creates.
"""

from __future__ import annotations

import math

import torch

from . import topology
from .base import SparseMethod

BETA = 0.9  # the SGD momentum Dettmers & Zettlemoyer train with, as the decay of our own mean


class SNFS(SparseMethod):
    name = "snfs"

    def __init__(self, masks, total_steps, config, generator):
        super().__init__(masks, total_steps, config, generator)
        self.momentum = {n: torch.zeros_like(p, memory_format=torch.contiguous_format)
                         for n, p in masks.params.items()}

    def death_rate(self, step: int) -> float:
        return topology.cosine_death_rate(step, self.total_steps, self.initial_death_rate,
                                          self.config.death_rate_final)

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        for n, p in self.masks.params.items():
            if p.grad is not None:
                self.momentum[n].mul_(BETA).add_(p.grad.detach(), alpha=1.0 - BETA)
            else:
                self.momentum[n].mul_(BETA)

    def update(self, step: int) -> dict | None:
        return self.rewire(self.death_rate(step))

    @torch.no_grad()
    def rewire(self, rate: float) -> dict:
        """One update at death rate ``rate``; returns the topology record."""
        names = list(self.masks.masks)
        shares, removed, capacity = [], {}, []
        for n in names:
            mask, nnz = self.masks.masks[n], self.masks.target_nnz[n]
            shares.append(float(self.momentum[n].abs()[mask].mean()) if nnz else 0.0)
            k = min(math.ceil(rate * nnz), nnz - 1)
            topology.remove_(self.masks, n, topology.smallest(self.masks.params[n].detach().abs(), mask, k))
            removed[n] = k
            capacity.append(mask.numel() - (nnz - k))
        budget = sum(removed.values())
        grown = dict(zip(names, topology.allocate(budget, shares, capacity)))
        for n in names:
            mask = self.masks.masks[n]
            topology.grow_(self.masks, n, topology.largest(self.momentum[n].abs(), ~mask, grown[n]))
            self.masks.target_nnz[n] += grown[n] - removed[n]
        return topology.record(self.masks, rate, removed, grown)

    def state_dict(self) -> dict:
        return {"momentum": {n: m.detach().cpu().clone() for n, m in self.momentum.items()}}

    def load_state_dict(self, state: dict) -> None:
        for n in self.momentum:
            m = state["momentum"][n]
            self.momentum[n] = m.to(device=self.masks.params[n].device, dtype=self.masks.params[n].dtype).clone()
