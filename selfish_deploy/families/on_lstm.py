"""ON-LSTM (Shen et al., ICLR 2019): the LSTM with ordered neurons (cumax master gates), as the authors' code.

Sources: ``yikangshen/Ordered-Neurons`` ``ON_LSTM.py`` (``cumsoftmax``, ``LinearDropConnect``, ``ONLSTMCell``,
``ONLSTMStack``) and ``model.py`` (``RNNModel``: the locked dropouts), which Selfish-RNN copies unchanged into
``ONLSTM/``. One file holds the training module, the sparse runtime trunk and the ONNX builder because all
three must agree on one row layout and one set of equations; keeping them side by side is what keeps them equal.

Each layer has two gate-stacked matrices, ``ih.0.weight`` (G, I) and ``hh.weight`` (G, H), G = 4H + 2n with
n = H / chunk_size chunks. Row blocks, in the authors' order (``ONLSTMCell.forward``)::

    rows 0  .. n       master_i   master input gate   (one value per chunk)   mi = 1 - cumax(.)
    rows n  .. 2n      master_f   master forget gate  (one value per chunk)   mf = cumax(.)
    next H             o          output gate         (per unit; unit u = chunk * chunk_size + j)
    next H             g          cell candidate
    next H             i          input gate
    next H             f          forget gate

    cumax(x) = cumsum(softmax(x)),  w = mf * mi  (the overlap, broadcast from a chunk to its units)
    f' = sigmoid(f) * w + (mf - w),  i' = sigmoid(i) * w + (mi - w)
    c = f' * c + i' * tanh(g),       h = sigmoid(o) * tanh(c)

DropConnect on ``hh.weight`` (option ``wdrop``, ``LinearDropConnect``): in training a Bernoulli(p) mask zeroes
W_hh once per forward (every time step shares the draw; each layer its own), without rescaling; in evaluation
W_hh is multiplied by (1 - p) (AWD-LSTM's ``WeightDrop`` rescales by 1/(1-p) in training instead). The
dropped matrix is a function of the parameter, never written into it: the sparse mask stays exact and the
dropped weights are back at the next forward. The runtime computes the eval product as (1 - p) * (W_hh h).

Locked dropouts (``LockedDropout``, one mask per sequence shared over time): ``dropouti`` on the trunk's input,
``dropouth`` between layers, ``dropout`` (``ModelConfig.dropout``) on its output; ``dropoute`` drops whole
rows of the embedding, in the trunk's ``embed`` (the model's embedding lookup). Both are AWD-LSTM's code
(Ordered-Neurons is forked from awd-lstm-lm), imported from ``families/awd_lstm.py``. AR/TAR: the authors' stack
returns the last layer's raw output as its last ``outputs`` entry, so both regularizers see the undropped
output (AWD-LSTM's AR sees the dropped one); the trunk keeps it as ``ar_input`` / ``tar_input``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from . import Family, Option, register
from .awd_lstm import embedded_dropout, locked_dropout

NAME = "on_lstm"
TRUNK = "rnn"  # the trunk's attribute on the model: names as the authors', ``rnn.cells.{k}.ih.0.weight``
GATE_NAMES = ("master_i", "master_f", "o", "g", "i", "f")
GATE_LABELS = {"master_i": "master input gate (per chunk)", "master_f": "master forget gate (per chunk)",
               "o": "output gate o", "g": "cell gate g", "i": "input gate i", "f": "forget gate f"}
# Defaults: the authors' main.py argparse defaults (``ModelConfig.dropout`` is their --dropout, the output's).
OPTIONS = (
    Option("chunk_size", 10, "ON-LSTM: units per chunk of the master gates (--chunk_size)"),
    Option("wdrop", 0.4, "DropConnect on each hidden-to-hidden matrix (on_lstm: LinearDropConnect, no rescaling "
                         "in training, W_hh * (1 - p) in evaluation)"),
    Option("dropouti", 0.5, "locked dropout on the embedded input"),
    Option("dropouth", 0.25, "locked dropout between layers"),
    Option("dropoute", 0.1, "embedding dropout: whole word rows of the embedding, training only"),
    # the training loop's (training/regularization.py), as main.py train()
    Option("alpha", 2.0, "AR: weight of the mean squared last-layer activation (on_lstm: the undropped one)"),
    Option("beta", 1.0, "TAR: weight of the mean squared step-to-step change of the last layer's output"),
    Option("variable_bptt", True, "AWD-LSTM's random window lengths around --bptt, the lr scaled by length/bptt"),
    Option("max_seq_len_delta", 0, "cap windows at bptt + this (0: uncapped, as main.py)"),
)


def _opt(config, name: str):
    """An option of ``config``, resolved by ``ModelConfig`` (a missing one: the default declared here)."""
    given = getattr(config, "options", None) or {}
    return given[name] if name in given else next(o.default for o in OPTIONS if o.name == name)


def validate(config) -> None:
    """Reject what the cell cannot build: a width that is not a whole number of chunks, a bad rate."""
    cs = _opt(config, "chunk_size")
    if cs < 1:
        raise UserError(f"chunk_size must be positive, got {cs}")
    for _, width in config.layer_sizes():
        if width % cs:
            raise UserError(f"on_lstm: layer width {width} is not a multiple of chunk_size {cs}")
    for k in ("wdrop", "dropouti", "dropouth", "dropoute"):
        if not 0.0 <= _opt(config, k) < 1.0:
            raise UserError(f"{k} must be in [0, 1), got {_opt(config, k)}")
    for k in ("alpha", "beta", "max_seq_len_delta"):
        if _opt(config, k) < 0:
            raise UserError(f"{k} must not be negative, got {_opt(config, k)}")


def gate_rows(width: int, chunk_size: int) -> tuple[int, ...]:
    """Rows of each block of a layer's stacked matrices, in ``GATE_NAMES`` order."""
    n = width // chunk_size
    return (n, n, width, width, width, width)


def cumax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """cumsum(softmax(x)): the authors' ``cumsoftmax``, a soft monotone 0 -> 1 step along ``dim``."""
    return torch.cumsum(F.softmax(x, dim=dim), dim=dim)


def onlstm_cell(gates: torch.Tensor, c: torch.Tensor, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One step from the summed projections ``gates`` (B, G) and the cell ``c`` (B, H): new ``h``, ``c``."""
    B, H = c.shape
    n = H // chunk_size
    mi, mf, units = gates.split([n, n, 4 * H], dim=1)  # split, not slices: one backward node, no zero-fills
    mi, mf = 1.0 - cumax(mi), cumax(mf)  # (B, n)
    o, g, i, f = units.reshape(B, 4, n, chunk_size).unbind(1)  # each (B, n, chunk)
    mi, mf = mi[:, :, None], mf[:, :, None]
    w = mf * mi
    f = torch.sigmoid(f) * w + (mf - w)
    i = torch.sigmoid(i) * w + (mi - w)
    c = f * c.view(B, n, chunk_size) + i * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h.reshape(B, H), c.reshape(B, H)


class DropConnectLinear(nn.Linear):
    """``LinearDropConnect``: the weight as seen by one forward, dropped in training, scaled in evaluation."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0):
        super().__init__(in_features, out_features, bias=True)
        self.dropout = dropout

    def effective_weight(self) -> torch.Tensor:
        if not self.training:
            return self.weight * (1 - self.dropout) if self.dropout else self.weight
        if not self.dropout:
            return self.weight
        drop = torch.empty_like(self.weight, dtype=torch.bool).bernoulli_(self.dropout)
        return self.weight.masked_fill(drop, 0.0)  # the parameter itself is untouched


class ONLSTMCell(nn.Module):
    """The authors' ``ONLSTMCell`` parameters: ``ih`` (an ``nn.Sequential``, hence ``ih.0.weight``) and ``hh``,
    PyTorch's default ``nn.Linear`` initialisation as theirs; the step itself is ``onlstm_cell``."""

    def __init__(self, input_size: int, hidden_size: int, chunk_size: int, dropconnect: float = 0.0):
        super().__init__()
        self.hidden_size, self.chunk_size = hidden_size, chunk_size
        rows = 4 * hidden_size + 2 * (hidden_size // chunk_size)
        self.ih = nn.Sequential(nn.Linear(input_size, rows, bias=True))
        self.hh = DropConnectLinear(hidden_size, rows, dropout=dropconnect)


class ONLSTMTrunk(nn.Module):
    """The stack of ON-LSTM layers with its dropouts (``ONLSTMStack`` and ``RNNModel``'s).

    ``forward(x (T, B, E), state [(h, c) (B, H_k) per layer]) -> (out (T, B, H_last), new state)``; ``embed``
    is the model's embedding lookup with the embedding dropout. Random draws in the authors' order: embedding
    rows, input mask, every layer's W_hh DropConnect (``sample_masks``), then the between-layer and output
    masks."""

    def __init__(self, config):
        super().__init__()
        validate(config)
        self.chunk_size = _opt(config, "chunk_size")
        self.dropout, self.dropouti = config.dropout, _opt(config, "dropouti")
        self.dropouth, self.dropoute = _opt(config, "dropouth"), _opt(config, "dropoute")
        self.cells = nn.ModuleList(ONLSTMCell(n_in, width, self.chunk_size, _opt(config, "wdrop"))
                                   for n_in, width in config.layer_sizes())
        self.ar_input: torch.Tensor | None = None
        self.tar_input: torch.Tensor | None = None

    def embed(self, encoder: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        """model.py ``embedded_dropout(self.encoder, input, dropoute if training else 0)``: (T, B, E)."""
        return embedded_dropout(encoder.weight, tokens, self.dropoute, self.training)

    def forward(self, x: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        x = locked_dropout(x, self.dropouti, self.training)  # model.py: lockdrop(emb, dropouti)
        w_hh = [cell.hh.effective_weight() for cell in self.cells]  # ONLSTMStack: sample_masks() first
        new, last = [], len(self.cells) - 1
        for k, cell in enumerate(self.cells):
            gi = cell.ih(x) + cell.hh.bias  # (T, B, G): every time step at once, both biases
            w_t = w_hh[k].t()
            h, c = state[k]
            outs = []
            for gi_t in gi.unbind(0):  # unbind: its backward stacks the T gradients once (gi[t] would
                # zero-fill a (T, B, G) gradient per step)
                h, c = onlstm_cell(torch.addmm(gi_t, h, w_t), c, self.chunk_size)
                outs.append(h)
            x = torch.stack(outs) if outs else x.new_zeros(0, x.size(1), cell.hidden_size)
            new.append((h, c))
            if k < last:
                x = locked_dropout(x, self.dropouth, self.training)
        # ONLSTMStack's outputs[-1] is the raw last layer (model.py does not append its dropped output): AR and
        # TAR both see the undropped output. Nothing is kept in eval mode (no graph held).
        self.ar_input = self.tar_input = x if self.training else None
        return locked_dropout(x, self.dropout, self.training), new


# --- registry pieces ----------------------------------------------------------------------------------------

def layer_prefix(k: int) -> str:
    return f"{TRUNK}.cells.{k}."


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """The trunk's parameters, full-model names (``rnn.cells.{k}.ih.0.weight``, ...), without building it."""
    cs = _opt(config, "chunk_size")
    shapes = {}
    for k, (n_in, width) in enumerate(config.layer_sizes()):
        p, rows = layer_prefix(k), sum(gate_rows(width, cs))
        shapes.update({p + "ih.0.weight": (rows, n_in), p + "ih.0.bias": (rows,),
                       p + "hh.weight": (rows, width), p + "hh.bias": (rows,)})
    return shapes


def state_layout(config) -> list[tuple[tuple[str, int], ...]]:
    """``(h, c)`` per layer, each (B, H_k); the authors keep c as (B, n, chunk), the same numbers."""
    return [(("h", width), ("c", width)) for _, width in config.layer_sizes()]


def sparse_names(config) -> list[str]:
    """Selfish-RNN's sparse trunk tensors (``Masking.add_module``: every non-bias parameter): ``ih.0.weight``
    and ``hh.weight`` of every layer (their ``init_optimizer_mask`` forgot ``hh`` in Sparse_ASGD; ours masks
    every sparse tensor's average alike)."""
    return [n for n in parameter_shapes(config) if n.endswith(".weight")]


def gate_blocks(param_name: str, config) -> tuple[str, ...]:
    stacked = param_name.startswith(TRUNK + ".cells.") and param_name.endswith(".weight")
    return GATE_NAMES if stacked else ("all",)


def gate_block_rows(param_name: str, config) -> tuple[int, ...]:
    """Rows per block of ``gate_blocks`` (unequal: the master gates have one row per chunk)."""
    shape = parameter_shapes(config).get(param_name)
    if shape is None:
        return ()
    if gate_blocks(param_name, config) == ("all",):
        return (shape[0],)
    k = int(param_name[len(TRUNK + ".cells."):].split(".")[0])
    return gate_rows(config.layer_sizes()[k][1], _opt(config, "chunk_size"))


# --- sparse runtime -----------------------------------------------------------------------------------------

class SparseTrunk:
    """The runtime's ON-LSTM: ``kernels.spmm`` for W_ih over all T*B columns, ``kernels.onlstm_recurrent`` for
    the T steps (compiled: W_hh h, cumax and the cell in one call). ``(tokens (T, B), state) -> (x (H_last,
    T*B), State)``."""

    def __init__(self, exported, matrix, vector, kernels):
        cfg = exported.model_config
        self.kernels, self.chunk_size = kernels, _opt(cfg, "chunk_size")
        self.hh_scale = 1.0 - _opt(cfg, "wdrop")  # LinearDropConnect's eval weight: W_hh * (1 - p)
        self.encoder = matrix("encoder.weight")
        self.layers = []
        for k in range(len(cfg.layer_sizes())):
            p = layer_prefix(k)
            bias = (vector(p + "ih.0.bias") + vector(p + "hh.bias")).contiguous()  # b_hh is not scaled
            self.layers.append((matrix(p + "ih.0.weight"), bias, matrix(p + "hh.weight")))

    def fused_step(self, decoder, decoder_bias):
        """The compiled one-call batch-1 step (kernels.compiled.OnlstmStep), with ``decoder`` or the trunk only."""
        from ..kernels.compiled import OnlstmStep

        return OnlstmStep(self.kernels, self.encoder, self.layers, self.hh_scale, self.chunk_size, decoder,
                          decoder_bias)

    def __call__(self, tokens: torch.Tensor, state) -> tuple[torch.Tensor, list]:
        from ..runtime.state import State  # lazily: the runtime package imports the model, which imports us

        T, B = tokens.shape
        dev = self.encoder.device
        ids = tokens.reshape(-1).to(dev, torch.int64).contiguous()
        x = self.kernels.embed(self.encoder, ids)  # (E, T*B)
        new = []
        for (w_ih, bias, w_hh), (h, c) in zip(self.layers, state):
            g = self.kernels.spmm(w_ih, x, bias)  # (G, T*B)
            h = h.to(dev, torch.float32).t().contiguous()  # (H, B)
            c = c.to(dev, torch.float32).t().contiguous()
            x, h, c = self.kernels.onlstm_recurrent(w_hh, self.hh_scale, g, T, B, h, c, self.chunk_size)
            new.append((h.t().contiguous(), c.t().contiguous()))
        return x, State(new)


# --- ONNX ---------------------------------------------------------------------------------------------------

def onnx_trunk(g, exported, x: str, states_in: list[str], states_out: list[str]) -> str:
    """Add the trunk to the ONNX graph ``g`` (export/onnx_graph.py's builder): ``x`` (T, B, E) -> (T, B, H_last).

    Per layer the input projection of every step is one ``MatMul``; the recurrence is a standard ``Scan``
    (opset 16+) whose body is one step (``Gemm``, ``Split``, ``Softmax``, ``CumSum``, ``Sigmoid``, ``Tanh``,
    ``Mul``/``Add``/``Sub``, ``Reshape``). ``states_in``/``states_out``: h0, c0 of layer 0, then layer 1, ...
    (B, H_k) each."""
    import numpy as np
    from onnx import TensorProto, helper

    cfg = exported.model_config
    cs, scale = _opt(cfg, "chunk_size"), 1.0 - _opt(cfg, "wdrop")
    one = g.const("onlstm.one", np.array(1.0, np.float32))
    axis1 = g.const("onlstm.axis1", np.array(1, np.int64))
    axes2 = g.axes(2)
    for k, (_, H) in enumerate(cfg.layer_sizes()):
        p, n = layer_prefix(k), H // cs
        rows = sum(gate_rows(H, cs))
        w_ih = g.weight(p + "ih.0.weight", *g.matrix(p + "ih.0.weight"))  # (G, I)
        w_hh = g.weight(p + "hh.weight", *g.matrix(p + "hh.weight"))  # (G, H)
        bias = (exported.dense[p + "ih.0.bias"].float() + exported.dense[p + "hh.bias"].float()).numpy()
        w_t = g.node("Transpose", [w_ih], p + "ih.T", perm=[1, 0])  # (I, G)
        gi = g.node("Add", [g.node("MatMul", [x, w_t], p + "ih.x"), g.const(p + "bias", bias)], p + "gi")
        split = g.const(p + "split", np.array(gate_rows(H, cs), np.int64))
        shape3 = g.const(p + "shape3", np.array([0, n, cs], np.int64))
        shape2 = g.const(p + "shape2", np.array([0, H], np.int64))
        s = f"l{k}."  # body value names, unique per layer (outer-scope names stay visible inside)
        nodes = []

        def node(op, inputs, output, **attrs):
            outs = [output] if isinstance(output, str) else output
            nodes.append(helper.make_node(op, inputs, outs, name=s + outs[0] + "/" + op, **attrs))
            return outs[0]

        gh = node("Gemm", [s + "h", w_hh], s + "gh", transB=1, alpha=scale)  # (B, G)
        gates = node("Add", [s + "gi_t", gh], s + "gates")
        node("Split", [gates, split], [s + q for q in ("mi_r", "mf_r", "o", "g", "i", "f")], axis=1)
        cumax_ = {q: node("CumSum", [node("Softmax", [s + q + "_r"], s + q + "_sm", axis=1), axis1], s + q + "_cm")
                  for q in ("mi", "mf")}
        mi = node("Unsqueeze", [node("Sub", [one, cumax_["mi"]], s + "mi2"), axes2], s + "mi")  # (B, n, 1)
        mf = node("Unsqueeze", [cumax_["mf"], axes2], s + "mf")
        o, gg, i, f = (node("Reshape", [s + q, shape3], s + q + "3") for q in ("o", "g", "i", "f"))
        w = node("Mul", [mf, mi], s + "w")
        f = node("Add", [node("Mul", [node("Sigmoid", [f], s + "f_s"), w], s + "f_w"),
                         node("Sub", [mf, w], s + "f_m")], s + "f2")
        i = node("Add", [node("Mul", [node("Sigmoid", [i], s + "i_s"), w], s + "i_w"),
                         node("Sub", [mi, w], s + "i_m")], s + "i2")
        c3 = node("Reshape", [s + "c", shape3], s + "c3")
        c_new = node("Add", [node("Mul", [f, c3], s + "fc"), node("Mul", [i, node("Tanh", [gg], s + "g_t")], s + "ig")],
                     s + "c_new3")
        h_new = node("Mul", [node("Sigmoid", [o], s + "o_s"), node("Tanh", [c_new], s + "c_t")], s + "h_new3")
        node("Reshape", [h_new, shape2], s + "h_out")
        node("Reshape", [c_new, shape2], s + "c_out")
        node("Identity", [s + "h_out"], s + "y")
        f32 = TensorProto.FLOAT
        body = helper.make_graph(
            nodes, f"onlstm_step_{k}",
            [helper.make_tensor_value_info(s + "h", f32, ["batch", H]),
             helper.make_tensor_value_info(s + "c", f32, ["batch", H]),
             helper.make_tensor_value_info(s + "gi_t", f32, ["batch", rows])],
            [helper.make_tensor_value_info(s + "h_out", f32, ["batch", H]),
             helper.make_tensor_value_info(s + "c_out", f32, ["batch", H]),
             helper.make_tensor_value_info(s + "y", f32, ["batch", H])])
        x = p + "out"  # (T, B, H): the scan output, after the two final states
        g.node("Scan", [states_in[2 * k], states_in[2 * k + 1], gi], [states_out[2 * k], states_out[2 * k + 1], x],
               body=body, num_scan_inputs=1)
    return x


def _sparse_trunk(exported, matrix, vector, kernels) -> SparseTrunk:
    return SparseTrunk(exported, matrix, vector, kernels)


FAMILY = register(Family(
    name=NAME, title="ON-LSTM (ordered neurons)",
    trunk=ONLSTMTrunk, parameter_shapes=parameter_shapes, state_layout=state_layout,
    gates=GATE_NAMES, gate_blocks=gate_blocks, gate_rows=gate_block_rows, gate_labels=GATE_LABELS,
    sparse_names=sparse_names,
    module_name=TRUNK, sparse_trunk=_sparse_trunk, onnx_trunk=onnx_trunk, options=OPTIONS, validate=validate,
    death_rate=0.5,  # Selfish-RNN README's ON-LSTM command: --death-rate 0.5
    layout_text=("Each layer's `ih.0.weight` `(4H+2H/chunk, I)` and `hh.weight` `(4H+2H/chunk, H)` stack, in "
                 "the authors' order, the master input and master forget gates (one row per chunk of "
                 "`chunk_size` units) and then the output, cell, input and forget gates (H rows each)."),
))
