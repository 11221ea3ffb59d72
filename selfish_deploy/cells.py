"""One time step of each recurrent cell, from pre-computed projections (PyTorch's equations and gate order).

``gi`` = x W_ih^T + b_ih and ``gh`` = h W_hh^T + b_hh, both (B, G*H). Used by the sparse runtime, which
computes the projections with its own kernels; must match ``nn.LSTM``/``nn.GRU``/``nn.RNN`` exactly.
"""

from __future__ import annotations

import torch


def lstm_step(gi: torch.Tensor, gh: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
    _, c = state
    i, f, g, o = (gi + gh).chunk(4, dim=-1)  # rows [i | f | g | o]
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


def gru_step(gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor):
    i_r, i_z, i_n = gi.chunk(3, dim=-1)  # rows [r | z | n]
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)  # b_hn stays inside r * (.), as in PyTorch
    h = (1 - z) * n + z * h
    return h, h


def rnn_tanh_step(gi, gh, h):
    h = torch.tanh(gi + gh)
    return h, h


def rnn_relu_step(gi, gh, h):
    h = torch.relu(gi + gh)
    return h, h


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn_tanh": rnn_tanh_step, "rnn_relu": rnn_relu_step}
