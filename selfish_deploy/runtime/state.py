"""The recurrent state of a batch of sequences: per layer a (B, width) tensor, or a tuple of them (``h`` or
``(h, c)``: the family's ``state_layout``).

A ``State`` is a list (``state[k]`` is layer k's ``h`` or ``(h, c)``, as ``init_state`` always returned) that
can also pick and join rows, which is what continuous batching does between steps::

    s = State.cat([a, b])      # a's rows, then b's
    s.select([2, 0])           # rows 2 and 0, in that order
"""

from __future__ import annotations

from typing import Sequence

import torch

Layer = "torch.Tensor | tuple[torch.Tensor, torch.Tensor]"


class State(list):
    @classmethod
    def of(cls, layers) -> "State":
        return layers if isinstance(layers, State) else cls(layers)

    @property
    def batch_size(self) -> int:
        first = self[0]
        return (first[0] if isinstance(first, tuple) else first).shape[0]

    def map(self, fn) -> "State":
        return State(tuple(fn(t) for t in layer) if isinstance(layer, tuple) else fn(layer) for layer in self)

    def select(self, rows) -> "State":
        """The state of ``rows`` (indices into the batch), in that order."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return self.map(lambda t: t.index_select(0, idx.to(t.device)))

    @classmethod
    def cat(cls, states: Sequence["State"]) -> "State":
        """One batch of the rows of ``states``, in order."""
        states = list(states)
        if len(states) == 1:
            return cls.of(states[0])
        layers = []
        for parts in zip(*states):
            if isinstance(parts[0], tuple):
                layers.append(tuple(torch.cat(ts, 0) for ts in zip(*parts)))
            else:
                layers.append(torch.cat(parts, 0))
        return cls(layers)

    def tensors(self) -> list[torch.Tensor]:
        return [t for layer in self for t in (layer if isinstance(layer, tuple) else (layer,))]
