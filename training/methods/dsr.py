"""DSR, dynamic sparse reparameterization (Mostafa & Wang, ICML 2019).

Each update (once per epoch unless ``--update-every``):

1. one global threshold ``H`` over all sparse tensors: active weights with ``|w| < H`` die (a tensor
   keeps at least one weight);
2. ``H`` adapts for the next update: doubled if fewer than ``(1 - TOLERANCE) * N`` died, halved if more
   than ``(1 + TOLERANCE) * N``, where ``N = round(--death-rate * total nnz)`` (default rate 0.1);
3. the freed count is reallocated over tensors in proportion to their surviving nnz
   (``topology.allocate``: exact integers, no tensor past its numel) and each tensor grows that many
   positions uniformly at random among its inactive ones (just-removed included) at zero.

Per-tensor nnz moves, so ``masks.target_nnz`` is updated; the total stays exact. ``H`` is checkpointed.
"""

from __future__ import annotations

import torch

from . import topology
from .base import SparseMethod

INITIAL_THRESHOLD = 1e-3  # small start; H doubles each update until the pruned count reaches the target
TOLERANCE = 0.1  # relative band around the target count inside which H stays


class DSR(SparseMethod):
    name = "dsr"
    default_death_rate = 0.1

    def __init__(self, masks, total_steps, config, generator):
        super().__init__(masks, total_steps, config, generator)
        self.threshold = INITIAL_THRESHOLD

    def update(self, step: int) -> dict | None:
        return self.rewire()

    @torch.no_grad()
    def rewire(self) -> dict:
        """One prune-at-threshold and reallocation; returns the topology record (``death_rate``: fraction
        of all non-zeros that died)."""
        names = list(self.masks.masks)
        total_nnz = sum(self.masks.target_nnz.values())
        removed, survivors, capacity = {}, [], []
        for n in names:
            mask, nnz = self.masks.masks[n], self.masks.target_nnz[n]
            w = self.masks.params[n].detach().abs()
            k = min(int((mask & (w < self.threshold)).sum()), nnz - 1)
            topology.remove_(self.masks, n, topology.smallest(w, mask, k))  # the k below H
            removed[n] = k
            survivors.append(nnz - k)
            capacity.append(mask.numel() - (nnz - k))
        freed = sum(removed.values())
        target = round(self.initial_death_rate * total_nnz)
        if freed < (1 - TOLERANCE) * target:
            self.threshold *= 2.0
        elif freed > (1 + TOLERANCE) * target:
            self.threshold /= 2.0
        grown = dict(zip(names, topology.allocate(freed, [float(s) for s in survivors], capacity)))
        for n in names:
            mask = self.masks.masks[n]
            topology.grow_(self.masks, n, topology.random_choice(~mask, grown[n], self.generator))
            self.masks.target_nnz[n] += grown[n] - removed[n]
        return topology.record(self.masks, freed / total_nnz, removed, grown)

    def state_dict(self) -> dict:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])
