"""The masked string classifier: embedding -> wired recurrent layers (the project's cells) -> 2-way head.

A ``Wiring`` says which earlier layers feed each layer; the plain study model is a stack (layer k reads layer
k-1), a random-graph model reads every earlier layer with an edge into it::

    tokens (T, B) -> encoder (T, B, E) ──> rnns.0 (T, B, H0) ──> rnns.1 ──> ... ──┐
                                   │            └──────────(skip)──────> rnns.3  │ readout layers
                                   inputs[k] = (-1 = embedding, or earlier layer indices), concatenated
    head(cat(readout outputs)[lengths - 1, b])  -> logits (B, 2)

Each layer is ``selfish_deploy.families.stacked.make_rnn`` (gate-stacked rows), every weight matrix is under a
``MaskRegistry`` mask (``encoder.weight``, ``rnns.{k}.weight_{ih,hh}_l0``, ``head.weight``). Padding follows the
last real step, and the cells are causal, so the output at ``lengths - 1`` is exactly the unpadded one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from selfish_deploy.errors import UserError
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.families.stacked import CELLS as ARCHS, GATES, make_rnn

from .reber import PAD, VOCAB_SIZE

EMBEDDING = -1  # pseudo layer index of the embedding in ``Wiring.inputs``


@dataclass(frozen=True)
class Wiring:
    arch: str
    emb: int  # embedding width
    sizes: tuple[int, ...]  # units per recurrent layer
    inputs: tuple[tuple[int, ...], ...]  # per layer: EMBEDDING or earlier layer indices, concatenated in order
    readout: tuple[int, ...]  # layers whose last-step outputs, concatenated, feed the head

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise UserError(f"unknown cell {self.arch!r}; choose from {', '.join(ARCHS)}")
        if len(self.inputs) != len(self.sizes) or not self.sizes or not self.readout:
            raise UserError("a wiring needs one input list per layer and at least one readout layer")
        for k, srcs in enumerate(self.inputs):
            if not srcs or any(not (j == EMBEDDING or 0 <= j < k) for j in srcs):
                raise UserError(f"layer {k} may read only the embedding or earlier layers, got {srcs}")

    def input_width(self, k: int) -> int:
        return sum(self.emb if j == EMBEDDING else self.sizes[j] for j in self.inputs[k])


def stacked(arch: str, emb: int, hidden: int, layers: int) -> Wiring:
    """The pruning study's model: ``layers`` layers of ``hidden`` units, each reading the one below."""
    return Wiring(arch, emb, (hidden,) * layers, ((EMBEDDING,),) + tuple((k - 1,) for k in range(1, layers)),
                  (layers - 1,))


class Classifier(nn.Module):
    """Valid/invalid classifier over a ``Wiring``; ``forward(tokens, lengths)`` returns logits (B, 2)."""

    def __init__(self, wiring: Wiring):
        super().__init__()
        self.wiring = wiring
        self.encoder = nn.Embedding(VOCAB_SIZE, wiring.emb, padding_idx=PAD)
        self.rnns = nn.ModuleList(make_rnn(wiring.arch, wiring.input_width(k), h) for k, h in enumerate(wiring.sizes))
        self.head = nn.Linear(sum(wiring.sizes[k] for k in wiring.readout), 2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.encoder(tokens)  # (T, B, E)
        outs: list[torch.Tensor] = []
        for k, rnn in enumerate(self.rnns):
            srcs = [x if j == EMBEDDING else outs[j] for j in self.wiring.inputs[k]]
            y, _ = rnn(torch.cat(srcs, dim=-1) if len(srcs) > 1 else srcs[0])  # (T, B, H_k), zero state
            outs.append(y)
        feats = torch.cat([outs[k] for k in self.wiring.readout], dim=-1)  # (T, B, R)
        last = feats[lengths.to(feats.device) - 1, torch.arange(feats.size(1), device=feats.device)]  # (B, R)
        return self.head(last)


def gate_tile(mask: torch.Tensor, arch: str) -> torch.Tensor:
    """The same (H, I) connection mask for every gate's row block: (G*H, I), rows [i|f|g|o] or [r|z|n]."""
    return mask.repeat(len(GATES[arch]), 1)


def install_masks(model: Classifier, masks: dict[str, torch.Tensor] | None = None) -> MaskRegistry:
    """A ``MaskRegistry`` over every weight matrix: dense, except the explicit ``masks`` given by name."""
    registry = MaskRegistry(model, density=1.0, arch=model.wiring.arch)
    if masks:
        unknown = set(masks) - set(registry.masks)
        if unknown:
            raise UserError(f"no such weight matrices: {sorted(unknown)}")
        registry.load_state_dict({**registry.state_dict(), **masks})
    return registry
