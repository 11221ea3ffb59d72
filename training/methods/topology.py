"""Pieces every dynamic-sparse method shares: the cosine death rate, exact and deterministic choice of
weights to remove or grow, integer budgets split over tensors, and the topology metrics record.

All choices work on the flattened tensor (row-major, so a gate-stacked LSTM matrix is one list of
``4*H*I`` positions, all gates together)::

    weight_hh (4H, H) -> flat index = row * H + col;  rows [ i | f | g | o ] are contiguous ranges

"Smallest k" and "largest k" sort the candidates' scores with a stable sort over candidates listed in
increasing flat index, so ties always go to the lower index: counts are exact and the result is the
same on every run and device. Random choices draw a permutation on the CPU generator the method was
given (checkpointed by the trainer) and only then move to the tensor's device.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from selfish_deploy.masks import MaskRegistry


def cosine_death_rate(step: int, total: int, initial: float, final: float) -> float:
    """``final + (initial - final)/2 * (1 + cos(pi * min(step, total) / total))``: clamped past ``total``."""
    if total <= 0:
        return final
    t = min(max(step, 0), total)
    return final + 0.5 * (initial - final) * (1.0 + math.cos(math.pi * t / total))


def _candidates(allowed: torch.Tensor) -> torch.Tensor:
    return allowed.reshape(-1).nonzero().squeeze(1)  # flat indices, increasing


def smallest(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` positions with the smallest ``scores`` among ``allowed`` (ties: lower index)."""
    idx = _candidates(allowed)
    if k > idx.numel():
        raise ValueError(f"asked for {k} positions among {idx.numel()} candidates")
    order = torch.sort(scores.reshape(-1)[idx], stable=True).indices[:k]
    return idx[order]


def largest(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` positions with the largest ``scores`` among ``allowed`` (ties: lower index)."""
    idx = _candidates(allowed)
    if k > idx.numel():
        raise ValueError(f"asked for {k} positions among {idx.numel()} candidates")
    order = torch.sort(scores.reshape(-1)[idx], descending=True, stable=True).indices[:k]
    return idx[order]


def random_choice(allowed: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Flat indices of ``k`` positions drawn uniformly without replacement among ``allowed``."""
    idx = _candidates(allowed)
    if k > idx.numel():
        raise ValueError(f"asked for {k} positions among {idx.numel()} candidates")
    perm = torch.randperm(idx.numel(), generator=generator)[:k]  # CPU draw: same stream on any device
    return idx[perm.to(idx.device)]


@torch.no_grad()
def remove_(masks: MaskRegistry, name: str, flat: torch.Tensor) -> None:
    """Take positions out of the mask and zero their weights (the next forward must not see them)."""
    masks.masks[name].view(-1)[flat] = False
    masks.params[name].view(-1)[flat] = 0.0


@torch.no_grad()
def grow_(masks: MaskRegistry, name: str, flat: torch.Tensor) -> None:
    """Put positions into the mask with weight zero (Selfish-RNN, RigL, SNFS: new weights start at 0)."""
    masks.masks[name].view(-1)[flat] = True
    masks.params[name].view(-1)[flat] = 0.0


def allocate(budget: int, shares: list[float], capacity: list[int]) -> list[int]:
    """Split ``budget`` into integers proportional to ``shares`` with ``0 <= out[i] <= capacity[i]`` and
    ``sum(out) == budget`` exactly: largest remainder (ties to the lower index), and what a full tensor
    cannot take is split again over the others. Shares that are all zero split evenly."""
    if budget > sum(capacity):
        raise ValueError(f"cannot place {budget} over a capacity of {sum(capacity)}")
    out = [0] * len(shares)
    remaining = budget
    open_ = [i for i, c in enumerate(capacity) if c > 0]
    while remaining > 0:
        w = {i: Fraction(max(shares[i], 0.0)) for i in open_}  # exact arithmetic: no float drift
        total = sum(w.values())
        if total == 0:
            w, total = {i: Fraction(1) for i in open_}, Fraction(len(open_))
        raw = {i: remaining * w[i] / total for i in open_}
        give = {i: math.floor(raw[i]) for i in open_}
        leftover = remaining - sum(give.values())
        for i in sorted(open_, key=lambda i: (-(raw[i] - give[i]), i))[:leftover]:
            give[i] += 1
        for i in open_:
            take = min(give[i], capacity[i] - out[i])
            out[i] += take
            remaining -= take
        open_ = [i for i in open_ if out[i] < capacity[i]]
    return out


def record(masks: MaskRegistry, death_rate: float, removed: dict[str, int], grown: dict[str, int]) -> dict:
    """The ``metrics.jsonl`` topology record (the plots read exactly these keys)."""
    rep = masks.report()
    return {
        "death_rate": float(death_rate),
        "density": {n: r["density"] for n, r in rep.items()},
        "gates": {n: r["gates"] for n, r in rep.items()},
        "removed": {n: int(removed.get(n, 0)) for n in rep},
        "grown": {n: int(grown.get(n, 0)) for n in rep},
    }
