"""The stacked LSTM/GRU/RNN trunk on the package's kernels (the sparse runtime of the families in
``families/stacked.py``).

Per layer: the input projections of every time step at once (one sparse x dense product), then the fused
recurrence, T steps in one kernel call. Activations are feature-major, (features, T*B), column n = t*B + b.

The first layer's input projection only ever sees rows of the embedding, so ``W_ih0 E[v] + b`` is computed for
every word ``v`` once, at load, by the same kernel, and looked up afterwards (the *input table*): the kernels
compute each column in the same order whatever the other columns, so the numbers are the same bit for bit,
and a generation step skips the first layer's input product (13% of the reference 2x650 model's non-zeros).
It is built when the table fits ``INPUT_TABLE_BYTES``. (A dense W_ih0's products of many columns are BLAS's,
whose blocking depends on the batch: its table equals a per-call product to rounding, and is then always used.)
"""

from __future__ import annotations

import torch

from ..exportdir import ExportedModel
from .state import State

INPUT_TABLE_BYTES = 128 << 20  # V x G*H fp32; the reference 2x650 model's is 104 MB
TABLE_CHUNK = 1024  # words per kernel call while building the table (bounds the temporaries)


class StackedTrunk:
    """Embedding, then ``config.layers`` single-layer cells of ``config.arch``."""

    def __init__(self, exported: ExportedModel, matrix, vector, kernels):
        cfg = exported.model_config
        self.cell, self.kernels = cfg.arch, kernels
        self.encoder = matrix("encoder.weight")
        self.layers = []
        for k in range(cfg.layers):
            p = f"rnns.{k}."
            b_ih, b_hh = vector(p + "bias_ih_l0"), vector(p + "bias_hh_l0")
            if self.cell == "gru":  # b_hn stays inside r * (.): b_hh goes to the cell
                proj_bias, cell_bias = b_ih, b_hh
            else:
                proj_bias, cell_bias = (b_ih + b_hh).contiguous(), None
            self.layers.append((matrix(p + "weight_ih_l0"), proj_bias, matrix(p + "weight_hh_l0"), cell_bias))
        w_ih0 = self.layers[0][0]
        fits = cfg.vocab_size * w_ih0.rows * 4 <= INPUT_TABLE_BYTES
        self.table = self._input_table() if fits else None

    def _input_table(self) -> torch.Tensor:
        """(V, G*H): row v = W_ih0 E[v] + bias, as the first layer's projection computes it for word v."""
        w_ih, bias = self.layers[0][0], self.layers[0][1]
        V = self.encoder.rows
        table = torch.empty(V, w_ih.rows, device=self.encoder.device)
        for v0 in range(0, V, TABLE_CHUNK):
            ids = torch.arange(v0, min(V, v0 + TABLE_CHUNK), device=self.encoder.device)
            table[v0:v0 + ids.numel()] = self.kernels.spmm(w_ih, self.kernels.embed(self.encoder, ids), bias).t()
        return table

    def fused_step(self, decoder, decoder_bias):
        """The compiled one-call batch-1 step (kernels.compiled.StackStep), with ``decoder`` or the trunk only."""
        from ..kernels.compiled import StackStep

        return StackStep(self.kernels, self.cell, self.encoder, self.layers, self.table, decoder, decoder_bias)

    def __call__(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Last layer's outputs (H, T*B), feature-major, and the new state."""
        T, B = tokens.shape
        dev = self.encoder.device
        ids = tokens.reshape(-1).to(dev, torch.int64).contiguous()
        x = None if self.table is not None else self.kernels.embed(self.encoder, ids)  # (E, T*B)
        new = []
        for k, ((w_ih, proj_bias, w_hh, cell_bias), layer) in enumerate(zip(self.layers, state)):
            rows = k == 0 and self.table is not None
            if rows:  # (T*B, G*H): the table's rows, read in place by the recurrence
                g = self.table.index_select(0, ids)
            else:
                g = self.kernels.spmm(w_ih, x, proj_bias)  # (G*H, T*B): every time step at once
            h, c = (layer if isinstance(layer, tuple) else (layer, None))
            h = h.to(dev, torch.float32).t().contiguous()
            c = c.to(dev, torch.float32).t().contiguous() if c is not None else None
            x, h, c = self.kernels.recurrent(self.cell, w_hh, cell_bias, g, T, B, h, c, g_rows=rows)
            new.append((h.t().contiguous(), c.t().contiguous()) if c is not None else h.t().contiguous())
        return x, State(new)
