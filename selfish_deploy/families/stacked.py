"""The stacked cells: ``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu`` (PyTorch's nn.LSTM / nn.GRU / nn.RNN).

Each layer is its own single-layer module (as in AWD-LSTM), so widths may differ: with tied weights the last
layer outputs ``emb`` units. Weights keep PyTorch's gate-stacked layout::

    rnns.{k}.weight_ih_l0  (G*H, I)   rows [ i | f | g | o ] LSTM, [ r | z | n ] GRU, G = 1 for the RNNs
    rnns.{k}.weight_hh_l0  (G*H, H)   same row blocks
    rnns.{k}.bias_{ih,hh}_l0  (G*H,)

Dropout (``config.dropout``, training only) on the embedding, between layers and on the last layer's output,
as in pytorch/examples word_language_model and the authors' stacked LSTM (Selfish-RNN ``models.py`` RNNModel).
The sparse runtime is the lead's fused path ``runtime.stacked.StackedTrunk``, imported when first used.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Family, register

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
GATES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n"), "rnn_tanh": ("h",), "rnn_relu": ("h",)}
TITLES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN (tanh)", "rnn_relu": "RNN (ReLU)"}
GATE_LABELS = {"i": "input gate i", "f": "forget gate f", "g": "cell gate g", "o": "output gate o",
               "r": "reset gate r", "z": "update gate z", "n": "new gate n", "h": "h"}
# ONNX's gate blocks as indices into PyTorch's: LSTM [i,f,g,o] -> [i,o,f,c]; GRU [r,z,n] -> [z,r,h].
ONNX_GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn_tanh": (0,), "rnn_relu": (0,)}


def make_rnn(cell: str, n_in: int, n_out: int) -> nn.Module:
    """One single-layer PyTorch recurrent module of ``cell`` (also the Reber-grammar study's layers)."""
    if cell == "lstm":
        return nn.LSTM(n_in, n_out)
    if cell == "gru":
        return nn.GRU(n_in, n_out)
    return nn.RNN(n_in, n_out, nonlinearity="tanh" if cell == "rnn_tanh" else "relu")


class StackedRNN(nn.ModuleList):
    """``layers`` single-layer modules; iterating gives them (``rnn.flatten_parameters()`` and the like).

    State per layer: ``h`` (B, H), or ``(h, c)`` for LSTM (nn.LSTM's (1, B, H) is made inside).
    """

    def __init__(self, cell: str, sizes: list[tuple[int, int]], dropout: float):
        super().__init__(make_rnn(cell, i, o) for i, o in sizes)
        self.cell, self.p = cell, dropout

    def forward(self, x: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        x = F.dropout(x, self.p, self.training)  # (T, B, E)
        new_state = []
        for rnn, s in zip(self, state, strict=True):
            s = tuple(t.unsqueeze(0) for t in s) if isinstance(s, tuple) else s.unsqueeze(0)
            x, s = rnn(x, s)  # (T, B, H_k)
            new_state.append(tuple(t.squeeze(0) for t in s) if isinstance(s, tuple) else s.squeeze(0))
            x = F.dropout(x, self.p, self.training)
        return x, new_state


def _trunk(cell: str, config) -> StackedRNN:
    return StackedRNN(cell, config.layer_sizes(), config.dropout)


def _parameter_shapes(cell: str, config) -> dict[str, tuple[int, ...]]:
    g = len(GATES[cell])
    shapes = {}
    for k, (n_in, n_out) in enumerate(config.layer_sizes()):
        shapes.update({f"rnns.{k}.weight_ih_l0": (g * n_out, n_in), f"rnns.{k}.weight_hh_l0": (g * n_out, n_out),
                       f"rnns.{k}.bias_ih_l0": (g * n_out,), f"rnns.{k}.bias_hh_l0": (g * n_out,)})
    return shapes


def _state_layout(cell: str, config) -> list[tuple[tuple[str, int], ...]]:
    parts = ("h", "c") if cell == "lstm" else ("h",)
    return [tuple((p, n_out) for p in parts) for _, n_out in config.layer_sizes()]


def _sparse_trunk(exported, matrix, vector, kernels):
    from ..runtime.stacked import StackedTrunk  # the lead's fused recurrence; imported when first used

    return StackedTrunk(exported, matrix, vector, kernels)


def _permute(t: torch.Tensor, cell: str) -> torch.Tensor:
    """Reorder the gate row blocks of a (G*H, ...) tensor from PyTorch's order to ONNX's."""
    blocks = t.chunk(len(GATES[cell]), dim=0)
    return torch.cat([blocks[i] for i in ONNX_GATE_ORDER[cell]], dim=0)


def _onnx_trunk(cell: str, graph, exported, x: str, states_in: list[str], states_out: list[str]) -> str:
    """ONNX ``LSTM``/``GRU``/``RNN`` per layer (export/onnx_graph.py's builder interface).

    GRU uses ``linear_before_reset=1`` (PyTorch's b_hn inside r * (.)); ``rnn_relu`` is ONNX RNN with Relu.
    """
    cfg = exported.model_config
    parts = 2 if cell == "lstm" else 1
    axis0, axis1 = graph.axes(0), graph.axes(1)
    for k in range(cfg.layers):
        p = f"rnns.{k}"
        width = exported.weight(f"{p}.weight_hh_l0").shape[1]  # the stored width (awd_lstm's last_hidden too)
        ws = []
        for src, dst in (("weight_ih", "W"), ("weight_hh", "R")):
            w, m = graph.matrix(f"{p}.{src}_l0")
            w = _permute(w, cell).unsqueeze(0)  # (1, G*H, in)
            m = None if m is None else _permute(m, cell).unsqueeze(0)
            ws.append(graph.weight(f"{p}.{dst}", w, m))
        bias = torch.cat([_permute(exported.dense[f"{p}.bias_{s}_l0"].float(), cell) for s in ("ih", "hh")])
        b = graph.const(f"{p}.B", bias.unsqueeze(0).numpy().astype(np.float32))  # (1, 2*G*H)
        states = [graph.node("Unsqueeze", [states_in[k * parts + j], axis0], f"{p}.state{j}_in")
                  for j in range(parts)]
        outs = [f"{p}.Y", f"{p}.Y_h"] + ([f"{p}.Y_c"] if cell == "lstm" else [])
        if cell == "lstm":
            graph.node("LSTM", [x, *ws, b, "", *states], outs, hidden_size=width)
        elif cell == "gru":
            graph.node("GRU", [x, *ws, b, "", *states], outs, hidden_size=width, linear_before_reset=1)
        else:
            graph.node("RNN", [x, *ws, b, "", *states], outs, hidden_size=width,
                       activations=["Tanh" if cell == "rnn_tanh" else "Relu"])
        x = graph.node("Squeeze", [outs[0], axis1], f"{p}.out")  # (T, 1, B, H) -> (T, B, H)
        for j in range(parts):
            graph.node("Squeeze", [outs[1 + j], axis0], states_out[k * parts + j])  # (1, B, H) -> (B, H)
    return x


for _cell in CELLS:
    register(Family(
        name=_cell, title=TITLES[_cell],
        trunk=partial(_trunk, _cell), parameter_shapes=partial(_parameter_shapes, _cell),
        state_layout=partial(_state_layout, _cell),
        gates=GATES[_cell], gate_labels={g: GATE_LABELS[g] for g in GATES[_cell]},
        sparse_trunk=_sparse_trunk, onnx_trunk=partial(_onnx_trunk, _cell),
        death_rate=0.8 if _cell == "lstm" else 0.5,  # Selfish-RNN: 0.8 for the stacked LSTM
        tags=(_cell.split("_")[0],),  # lstm, gru, rnn
        layout_text=("Weight matrices keep PyTorch's gate-stacked layout: `weight_ih_l0` is `(G*H, I)` with row "
                     f"blocks `[{'|'.join(GATES[_cell])}]` ({TITLES[_cell]})."),
    ))
