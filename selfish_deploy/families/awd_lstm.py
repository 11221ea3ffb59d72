"""AWD-LSTM (Merity et al., ICLR 2018): stacked LSTMs with weight drop, locked and embedding dropout.

Faithful to ``salesforce/awd-lstm-lm`` (``model.py`` ``RNNModel``, ``weight_drop.py`` ``WeightDrop``,
``locked_dropout.py`` ``LockedDropout``, ``embed_regularize.py`` ``embedded_dropout``; the same files sit in
``Shiweiliuiiiiiii/Selfish-RNN`` ``ONLSTM/``). The training-mode forward, in their order of random draws::

    x = embedded_dropout(E, tokens, dropoute)      whole word rows of E dropped, the rest scaled 1/(1-p)
    x = locked(x, dropouti)                        one (1, B, E) mask shared by every time step
    layer k:  W_hh' = dropout(W_hh, wdrop)         DropConnect on the recurrent matrix (WeightDrop)
              raw_k = LSTM_k(x; W_ih, W_hh')       a single-layer nn.LSTM, widths layer_sizes(config)
              x = locked(raw_k, dropouth)          between layers only
    out = locked(raw_last, dropout)                what the decoder sees; AR squares it, TAR differences raw_last

Weight drop and the sparse mask: the parameter ``rnns.{k}.weight_hh_l0`` is the masked weight itself (the
optimizer and ``MaskRegistry`` see only it); the dropped copy ``W_hh'`` exists only inside ``forward`` and is
handed to the LSTM with ``torch.func.functional_call``. So the mask stays exact (dead weights are 0 in the
parameter and so in every dropped copy), the dropped-out alive weights are back at the next forward
(nothing is written into the parameter), and the gradient reaches the parameter through the dropout (zero
on this step's dropped entries, 1/(1-p) on the rest), as ``WeightDrop``'s ``weight_hh_l0_raw``.
Ours differs from ``WeightDrop`` in the parameter's name only: it keeps the stacked LSTM's name, not
``module.weight_hh_l0_raw``.

In evaluation mode every dropout is the identity (``F.dropout(training=False)``, ``LockedDropout`` returns
its input), so the trunk is exactly a plain stacked LSTM with the same weights: export, sparse runtime and
ONNX graph are the stacked LSTM's.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from ..errors import UserError
from . import Family, Option, get_family, register
from .stacked import GATE_LABELS, GATES

# awd-lstm-lm's README command for word-level PTB (``main.py --batch_size 20 --dropouti 0.4 --dropouth 0.25
# --seed 141 --epoch 500``) over its argparse defaults. Its --dropout (0.4) is ModelConfig.dropout, here the
# output dropout; the recipe ptb-awd-lstm sets it.
OPTIONS = (
    Option("dropouti", 0.4, "locked dropout on the embedded input"),
    Option("dropouth", 0.25, "locked dropout between recurrent layers"),
    Option("dropoute", 0.1, "embedding dropout: fraction of the vocabulary whose embedding rows are zeroed, "
                            "per batch"),
    Option("wdrop", 0.5, "weight drop: DropConnect on every hidden-to-hidden matrix (the sparse mask stays exact)"),
    Option("alpha", 2.0, "AR: alpha * mean squared last-layer activation, added to the training loss"),
    Option("beta", 1.0, "TAR: beta * mean squared step-to-step change of the last layer's raw output"),
    Option("variable_bptt", True, "variable-length BPTT windows (mean --bptt, or --bptt/2 with probability 0.05; "
                                  "sd 5; at least 5), each step's lr scaled by its length / --bptt"),
    Option("max_seq_len_delta", 0, "cap BPTT windows at --bptt + N (0: uncapped, as awd-lstm-lm)"),
    Option("last_hidden", 0, "width of the last recurrent layer (0: --emb when tied, else --hidden); for a "
                             "decoder that projects it to --emb (mos)"),
)
PROBABILITIES = ("dropouti", "dropouth", "dropoute", "wdrop")


def option(config, name: str):
    """A knob of ``config``: its resolved ``options`` entry, else the declared default."""
    opts = getattr(config, "options", None) or {}
    if name in opts:
        return opts[name]
    return next(o.default for o in OPTIONS if o.name == name)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``LockedDropout.forward``: one Bernoulli(1-p) mask per (batch, unit), scaled by 1/(1-p), shared over
    time (``x`` is (T, B, W)); the identity in eval mode or at p = 0."""
    if not training or not p:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return mask * x


def embedded_dropout(weight: torch.Tensor, tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``embed_regularize.embedded_dropout``: drop whole rows of the embedding matrix (a dropped word is zero
    wherever it occurs in the batch), scale the kept rows by 1/(1-p); ``F.embedding`` of the plain matrix in
    eval mode or at p = 0. Returns (T, B, E) for ``tokens`` (T, B)."""
    if training and p:
        mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)  # (V, 1)
        weight = mask * weight
    return F.embedding(tokens, weight)


class AWDLSTMTrunk(nn.ModuleList):
    """The recurrent layers of AWD-LSTM between the embedding and the decoder: one single-layer ``nn.LSTM``
    per layer (so parameters are ``rnns.{k}.weight_ih_l0``, ... as the stacked LSTM's).

    ``forward(x (T, B, E), state) -> (out (T, B, W_last), state)``, state per layer ``(h, c)``, each (B, W_k).
    ``embed(encoder, tokens)`` is the model's embedding lookup with embedding dropout. In training mode the
    forward leaves ``ar_input`` (the dropped last-layer output, awd-lstm-lm's ``dropped_rnn_hs[-1]``) and
    ``tar_input`` (the raw one, ``rnn_hs[-1]``) for ``training.regularization``; both are None after an
    eval-mode forward."""

    def __init__(self, sizes: list[tuple[int, int]], dropout: float, dropouti: float, dropouth: float,
                 wdrop: float, dropoute: float = 0.0):
        super().__init__(nn.LSTM(n_in, n_out) for n_in, n_out in sizes)
        for name, p in (("dropout", dropout), ("dropouti", dropouti), ("dropouth", dropouth), ("wdrop", wdrop),
                        ("dropoute", dropoute)):
            if not 0.0 <= p < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {p}")
        self.dropout, self.dropouti, self.dropouth, self.wdrop = dropout, dropouti, dropouth, wdrop
        self.dropoute = dropoute
        self.ar_input: torch.Tensor | None = None
        self.tar_input: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config) -> "AWDLSTMTrunk":
        return cls(layer_sizes(config), config.dropout, option(config, "dropouti"), option(config, "dropouth"),
                   option(config, "wdrop"), option(config, "dropoute"))

    def embed(self, encoder: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        """The embedding lookup, with embedding dropout in training mode (RNNModel.forward's first line)."""
        return embedded_dropout(encoder.weight, tokens, self.dropoute, self.training)

    def forward(self, x: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        x = locked_dropout(x, self.dropouti, self.training)
        new_state = []
        last = len(self) - 1
        for k, (rnn, (h, c)) in enumerate(zip(self, state, strict=True)):
            raw, (h, c) = self.layer(rnn, x, (h.unsqueeze(0), c.unsqueeze(0)))  # (T, B, W_k); nn.LSTM's (1, B, W)
            new_state.append((h.squeeze(0), c.squeeze(0)))
            x = locked_dropout(raw, self.dropouth, self.training) if k < last else raw
        out = locked_dropout(raw, self.dropout, self.training)
        self.ar_input, self.tar_input = (out, raw) if self.training else (None, None)
        return out, new_state

    def layer(self, rnn: nn.LSTM, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
        """One LSTM layer; in training mode with DropConnect on ``weight_hh_l0`` (``WeightDrop._setweights``:
        ``F.dropout`` of the raw, here masked, matrix), the parameter itself untouched."""
        if not (self.training and self.wdrop):
            return rnn(x, state)
        dropped = F.dropout(rnn.weight_hh_l0, p=self.wdrop, training=True)
        return functional_call(rnn, {"weight_hh_l0": dropped}, (x, state))


# --- the registry entry --------------------------------------------------------------------------------------

def layer_sizes(config) -> list[tuple[int, int]]:
    """(input, output) width per layer: ``ModelConfig.layer_sizes()``, the last output ``last_hidden`` when
    set (awd-lstm-lm: ``nhid``, the last one ``ninp`` when tied; zihangdai/mos: the last one ``nhidlast``)."""
    sizes = config.layer_sizes()
    last = option(config, "last_hidden")
    if last:
        sizes[-1] = (sizes[-1][0], last)
    return sizes


def _parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for k, (n_in, n_out) in enumerate(layer_sizes(config)):
        shapes.update({f"rnns.{k}.weight_ih_l0": (4 * n_out, n_in), f"rnns.{k}.weight_hh_l0": (4 * n_out, n_out),
                       f"rnns.{k}.bias_ih_l0": (4 * n_out,), f"rnns.{k}.bias_hh_l0": (4 * n_out,)})
    return shapes


def _state_layout(config) -> list[tuple[tuple[str, int], ...]]:
    return [(("h", n_out), ("c", n_out)) for _, n_out in layer_sizes(config)]


def _validate(config) -> None:
    for name in PROBABILITIES:
        if not 0.0 <= option(config, name) < 1.0:
            raise UserError(f"--{name} must be in [0, 1), got {option(config, name)}")
    if option(config, "alpha") < 0 or option(config, "beta") < 0:
        raise UserError("--alpha and --beta must not be negative")
    if option(config, "max_seq_len_delta") < 0 or option(config, "last_hidden") < 0:
        raise UserError("--max-seq-len-delta and --last-hidden must not be negative")
    last = layer_sizes(config)[-1][1]
    if config.tie_weights and config.decoder == "softmax" and last != config.emb:
        raise UserError(f"a tied softmax decoder needs the last layer as wide as --emb ({config.emb}), "
                        f"got --last-hidden {last}")


def as_lstm(exported):
    """The export as the stacked LSTM's: in eval mode the AWD trunk is one (same tensors, same names)."""
    cfg = dataclasses.replace(exported.model_config, arch="lstm", options={})
    return dataclasses.replace(exported, model_config=cfg)


def _sparse_trunk(exported, matrix, vector, kernels):
    return get_family("lstm").sparse_trunk(as_lstm(exported), matrix, vector, kernels)


def _onnx_trunk(graph, exported, x, states_in, states_out):
    return get_family("lstm").onnx_trunk(graph, as_lstm(exported), x, states_in, states_out)


register(Family(
    name="awd_lstm", title="AWD-LSTM",
    trunk=AWDLSTMTrunk.from_config,
    parameter_shapes=_parameter_shapes, state_layout=_state_layout,
    gates=GATES["lstm"], gate_labels={g: GATE_LABELS[g] for g in GATES["lstm"]},
    out_size=lambda config: layer_sizes(config)[-1][1],
    sparse_trunk=_sparse_trunk, onnx_trunk=_onnx_trunk,
    options=OPTIONS, validate=_validate,
    death_rate=0.5,  # Selfish-RNN's AWD-based runs (ONLSTM/ README command: --death-rate 0.5)
    layout_text=("Weight matrices keep PyTorch's gate-stacked layout: `weight_ih_l0` is `(4*H, I)` with row blocks "
                 "`[i|f|g|o]`; weight drop, locked and embedding dropout act in training only, so the stored model "
                 "is a stacked LSTM."),
))
