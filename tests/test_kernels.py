"""Reference sparse kernels against dense PyTorch on random inputs (relative error < 1e-5 in fp32)."""

from __future__ import annotations

import pytest
import torch

from selfish_deploy import kernels
from selfish_deploy.cells import STEPS
from selfish_deploy.csr import CSR
from selfish_deploy.masks import random_mask


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def sparse_weight(rows, cols, density, seed):
    g = torch.Generator().manual_seed(seed)
    mask = random_mask((rows, cols), round(density * rows * cols), g)
    w = torch.randn(rows, cols, generator=g) * mask
    return w, CSR.from_masked(w, mask).to_torch()


@pytest.mark.parametrize("density", [0.01, 0.1, 0.33, 1.0])
@pytest.mark.parametrize("n", [1, 7, 64])
def test_linear_matches_dense(density, n):
    w, csr = sparse_weight(96, 40, density, seed=n)
    x, b = torch.randn(n, 40), torch.randn(96)
    assert rel_err(kernels.linear(x, csr, b), x @ w.t() + b) < 1e-5
    assert rel_err(kernels.linear(x, w, b), x @ w.t() + b) < 1e-6


@pytest.mark.parametrize("density", [0.0005, 0.2, 1.0])
def test_embedding_gather_matches_dense(density):
    w, csr = sparse_weight(50, 12, density, seed=1)
    ids = torch.tensor([[0, 49, 3], [3, 3, 17]])  # repeats, first and last row, maybe empty rows
    assert torch.equal(kernels.embedding(csr, ids), w[ids])
    assert torch.equal(kernels.embedding(w, ids), w[ids])


@pytest.mark.parametrize("arch,module", [
    ("lstm", torch.nn.LSTMCell), ("gru", torch.nn.GRUCell),
    ("rnn_tanh", lambda i, h: torch.nn.RNNCell(i, h, nonlinearity="tanh")),
    ("rnn_relu", lambda i, h: torch.nn.RNNCell(i, h, nonlinearity="relu")),
])
def test_cell_steps_match_pytorch_cells(arch, module):
    torch.manual_seed(0)
    cell = module(8, 6)
    x, h, c = torch.randn(5, 8), torch.randn(5, 6), torch.randn(5, 6)
    gi = x @ cell.weight_ih.t() + cell.bias_ih
    gh = h @ cell.weight_hh.t() + cell.bias_hh
    if arch == "lstm":
        ref_h, ref_c = cell(x, (h, c))
        out, (h2, c2) = STEPS[arch](gi, gh, (h, c))
        assert rel_err(c2, ref_c) < 1e-6
    else:
        ref_h = cell(x, h)
        out, h2 = STEPS[arch](gi, gh, h)
    assert rel_err(out, ref_h) < 1e-6 and torch.equal(out, h2)
