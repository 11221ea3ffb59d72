"""The recurrent language model: embedding -> stacked single-layer RNNs -> decoder.

Each layer is its own ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (as in AWD-LSTM) so layer widths may differ: with
tied weights the last layer outputs ``emb`` units. Weights keep PyTorch's gate-stacked layout::

    weight_ih_l0  (G*H, I)   rows [ i | f | g | o ] for LSTM, [ r | z | n ] for GRU, G=1 for RNNs
    weight_hh_l0  (G*H, H)   same row blocks

Parameter names are ``encoder.weight``, ``rnns.{k}.weight_{ih,hh}_l0``, ``rnns.{k}.bias_{ih,hh}_l0``,
``decoder.weight`` (absent from ``named_parameters`` when tied) and ``decoder.bias``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .errors import UserError

ARCHS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
GATE_NAMES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn_tanh": ("h",), "rnn_relu": ("h",)}


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "lstm"
    vocab_size: int = 10000
    emb: int = 200  # embedding width; the last layer's width too when tied
    hidden: int = 200
    layers: int = 2
    dropout: float = 0.5  # on embeddings, between layers and before the decoder
    tie_weights: bool = True  # decoder shares the embedding matrix (and its mask)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise UserError(f"unknown arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        for k in ("vocab_size", "emb", "hidden", "layers"):
            if getattr(self, k) < 1:
                raise UserError(f"{k} must be positive, got {getattr(self, k)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input, output) width of every layer."""
        sizes = []
        for k in range(self.layers):
            n_in = self.emb if k == 0 else self.hidden
            n_out = self.emb if (self.tie_weights and k == self.layers - 1) else self.hidden
            sizes.append((n_in, n_out))
        return sizes

    @property
    def out_size(self) -> int:
        return self.layer_sizes()[-1][1]

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every parameter of ``RNNLM(self)`` (tied: no ``decoder.weight``), without building it."""
        shapes = {"encoder.weight": (self.vocab_size, self.emb)}
        g = GATES[self.arch]
        for k, (n_in, n_out) in enumerate(self.layer_sizes()):
            shapes.update({f"rnns.{k}.weight_ih_l0": (g * n_out, n_in), f"rnns.{k}.weight_hh_l0": (g * n_out, n_out),
                           f"rnns.{k}.bias_ih_l0": (g * n_out,), f"rnns.{k}.bias_hh_l0": (g * n_out,)})
        if not self.tie_weights:
            shapes["decoder.weight"] = (self.vocab_size, self.out_size)
        shapes["decoder.bias"] = (self.vocab_size,)
        return shapes

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


def make_rnn(arch: str, n_in: int, n_out: int) -> nn.Module:
    if arch == "lstm":
        return nn.LSTM(n_in, n_out)
    if arch == "gru":
        return nn.GRU(n_in, n_out)
    return nn.RNN(n_in, n_out, nonlinearity="tanh" if arch == "rnn_tanh" else "relu")


def gate_count(param_name: str, arch: str) -> int:
    """Number of row blocks (gates) stacked in a parameter: G for recurrent weights, else 1."""
    return GATES[arch] if param_name.startswith("rnns.") else 1


class RNNLM(nn.Module):
    """Word-level RNN language model; ``forward`` returns logits (T, B, V) and the new state."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.Embedding(config.vocab_size, config.emb)
        self.rnns = nn.ModuleList(make_rnn(config.arch, i, o) for i, o in config.layer_sizes())
        self.decoder = nn.Linear(config.out_size, config.vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.encoder.weight
        self.init_weights()

    def init_weights(self) -> None:
        # word_language_model's init for embedding and decoder; PyTorch's default for the RNNs.
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if not self.config.tie_weights:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def init_hidden(self, batch_size: int) -> list:
        """Zero state per layer: ``(h, c)`` for LSTM, ``h`` otherwise, each (1, B, width)."""
        w = self.encoder.weight
        state = []
        for _, n_out in self.config.layer_sizes():
            h = w.new_zeros(1, batch_size, n_out)
            state.append((h, h.clone()) if self.config.arch == "lstm" else h)
        return state

    def forward(self, tokens: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        x = self.drop(self.encoder(tokens))  # (T, B, E)
        new_state = []
        for k, rnn in enumerate(self.rnns):
            x, s = rnn(x, state[k])  # (T, B, H_k)
            new_state.append(s)
            x = self.drop(x)
        return self.decoder(x), new_state


def repackage(state):
    """Detach the state from the graph of the previous BPTT window."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(repackage(s) for s in state)
