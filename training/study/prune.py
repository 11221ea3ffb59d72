"""One-shot global magnitude pruning of recurrent layers (thesis sec. 3.6.1 and ch. 6) in three regimes."""

from __future__ import annotations

import torch

from selfish_deploy.masks import MaskRegistry

# Which recurrent weight matrices a regime prunes; embedding, biases and head are never pruned.
REGIMES = {"both": ("weight_ih", "weight_hh"), "input": ("weight_ih",), "recurrent": ("weight_hh",)}


def regime_tensors(masks: MaskRegistry, regime: str) -> list[str]:
    """Names of the regime's matrices, in parameter order (``rnns.0.weight_ih_l0``, ``rnns.0.weight_hh_l0``, ...)."""
    kinds = REGIMES[regime]
    return [n for n in masks.params if n.startswith("rnns.") and n.split(".")[-1].rsplit("_l", 1)[0] in kinds]


@torch.no_grad()
def magnitude_masks(masks: MaskRegistry, names: list[str], fraction: float) -> dict[str, torch.Tensor]:
    """Masks over ``names`` with exactly ``round(fraction * N)`` of their N weights pruned, globally: the smallest
    |w| over all of them together. Weights already masked out go first (score -1). Ties are broken by position --
    tensors in the order given, row-major inside each -- the earlier weight pruned first (a stable sort)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    scores = torch.cat([torch.where(masks.masks[n], masks.params[n].detach().abs(), -1.0).flatten().cpu()
                        for n in names])
    k = round(fraction * scores.numel())
    dead = int((scores < 0).sum())
    if k < dead:
        raise ValueError(f"{dead} weights are already pruned, more than the {k} asked for")
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.sort(scores, stable=True).indices[:k]] = False
    out, start = {}, 0
    for n in names:
        size = masks.masks[n].numel()
        out[n] = keep[start:start + size].view_as(masks.masks[n])
        start += size
    return out


def prune_(masks: MaskRegistry, regime: str, fraction: float) -> dict:
    """Prune in place (masks installed, weights zeroed); returns the counts for the study's CSV."""
    names = regime_tensors(masks, regime)
    new = magnitude_masks(masks, names, fraction)
    masks.load_state_dict({**masks.state_dict(), **new})
    total = sum(masks.masks[n].numel() for n in names)
    nnz = sum(masks.nnz(n) for n in names)
    return {"weights": total, "nnz": nnz, "density": nnz / total}
