"""Recurrent Highway Networks (Zilly et al., ICML 2017) as Selfish-RNN trains them: module, sparse runtime trunk.

Faithful to ``Shiweiliuiiiiiii/Selfish-RNN`` ``models.py`` (``HighwayBlock``, ``RecurrentHighway``, ``RHN``) as
its RHN command runs it (``main.py --model RHN --couple --tied``, depth ``--nrecurrence_depth`` 10). Per
time step the state s goes through L micro-steps; only the first sees the input::

    micro-step l:  [a_h; a_t] = W x_t + b_W + R_l (s * m_h) + b_l      (W x_t and b_W at l = 0 only)
                   h = tanh(a_h),  t = sigmoid(a_t),  c = 1 - t         (coupled carry gate, ``--couple``)
                   s = h * t + s * c                                    (the output of step t is s after L)

Tensor layout (row blocks as ``torch.split(..., H, 1)`` reads them in ``HighwayBlock.forward``)::

    rnns.{k}.highways.0.W.weight  (2H, I)  rows [ h | t ]     the input projection, layer k
    rnns.{k}.highways.{l}.R.weight (2H, H) rows [ h | t ]     micro-step l = 0..L-1
    rnns.{k}.highways.{l}.{W,R}.bias (2H,)                    dense (Masking removes every 'bias')

Sparse, as ``sparse_rnn_core.Masking.init_optimizer_mask`` (model ``RHN``) lists them: the embedding (tied
to the decoder), W and every R_l; biases dense. ``gate_num = 2`` there: the h and t blocks.

Dropout (training only; per forward call, i.e. one BPTT window, the same mask at every time step):
``dropouti`` on the embeddings (``LockedDropout``, their ``--dropouti`` 0.65), ``dropouth`` on s
before every R_l (``RecurrentHighway.rhn_drop_mask``, ``--dropouth`` 0.25; the carry term uses s unmasked),
the model's ``dropout`` on each layer's output (``--dropout`` 0.65); ``dropoute`` (whole vocabulary
rows, their ``embedded_dropout``, ``--dropoute`` 0.2) in ``RHNTrunk.embed``, the model's embedding lookup.

Where ours differs (flags, README): several layers each keep their own state (theirs passes one hidden tensor
through all layers and sizes R by the layer input, so only one layer with I = H runs there);
``rhn_init`` "zilly" (default "selfish": PyTorch's ``nn.Linear`` init, as theirs) initialises as the
TensorFlow original (``jzilly/RecurrentHighwayNetworks``: uniform +-0.04, t-gate biases -2.0). The uncoupled
carry gate (their default without ``--couple``) is not implemented.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError
from . import Family, Option, register

GATE_NAMES = ("h", "t")
# main.py's argparse defaults and README command for RHN (--nrecurrence_depth 10, --dropouti 0.65,
# --dropouth 0.25, --dropoute 0.2; --dropout 0.65 is ModelConfig.dropout).
DEFAULTS = {"depth": 10, "dropouti": 0.65, "dropouth": 0.25, "dropoute": 0.2, "rhn_init": "selfish"}
INITS = ("selfish", "zilly")
ZILLY_SCALE, ZILLY_BIAS = 0.04, -2.0  # jzilly/RecurrentHighwayNetworks rhn_train.py ptb_sota


def option(config, name: str):
    """A family knob: ``config.options[name]`` (ModelConfig resolves them), else the authors' default."""
    return config.options.get(name, DEFAULTS[name])


def dropout(config, name: str) -> float:
    p = float(option(config, name))
    if not 0.0 <= p < 1.0:
        raise UserError(f"{name} must be in [0, 1), got {p}")
    return p


def depth(config) -> int:
    d = int(option(config, "depth"))
    if d < 1:
        raise UserError(f"RHN depth must be positive, got {d}")
    return d


def _prefix(k: int, l: int) -> str:
    return f"rnns.{k}.highways.{l}."


def parameter_shapes(config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the trunk's parameters (full model names), without building it."""
    shapes = {}
    for k, (n_in, width) in enumerate(config.layer_sizes()):
        for l in range(depth(config)):
            p = _prefix(k, l)
            if l == 0:
                shapes.update({p + "W.weight": (2 * width, n_in), p + "W.bias": (2 * width,)})
            shapes.update({p + "R.weight": (2 * width, width), p + "R.bias": (2 * width,)})
    return shapes


def locked_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """A (B, F) Bernoulli(1 - p) / (1 - p) mask for ``like`` (..., B, F), drawn once per call."""
    return like.new_empty(like.shape[-2:]).bernoulli_(1 - p) / (1 - p)


def embedded_dropout(weight: torch.Tensor, tokens: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embeddings of ``tokens`` with whole vocabulary rows dropped (Selfish-RNN ``models.embedded_dropout``,
    from AWD-LSTM): one mask over the rows per call, the kept rows scaled by 1 / (1 - p)."""
    if training and p:
        keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * keep
    return nn.functional.embedding(tokens, weight)


class HighwayBlock(nn.Module):
    """Micro-step l of a recurrent highway layer (their ``HighwayBlock`` with ``couple=True``)."""

    def __init__(self, n_in: int, width: int, first: bool):
        super().__init__()
        self.width = width
        self.W = nn.Linear(n_in, 2 * width) if first else None
        self.R = nn.Linear(width, 2 * width)

    def forward(self, wx: torch.Tensor | None, s: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``wx``: W x_t + b_W (B, 2H) at l = 0, else None; ``s`` (B, H); ``mask`` on s before R (or None)."""
        a = self.R(s if mask is None else s * mask)
        if wx is not None:
            a = wx + a
        a_h, a_t = torch.split(a, self.width, 1)
        h, t = torch.tanh(a_h), torch.sigmoid(a_t)
        return h * t + s * (1 - t)


class RecurrentHighway(nn.Module):
    """One recurrent highway layer of depth L (their ``RecurrentHighway``): (T, B, I) -> (T, B, H)."""

    def __init__(self, n_in: int, width: int, depth: int, dropout_hidden: float):
        super().__init__()
        self.highways = nn.ModuleList(HighwayBlock(n_in, width, l == 0) for l in range(depth))
        self.dropout_hidden = dropout_hidden

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = locked_mask(s, self.dropout_hidden) if self.training and self.dropout_hidden else None
        wx = self.highways[0].W(x)  # (T, B, 2H): every time step at once, as W(x_t) per step
        outs = []
        for t in range(x.shape[0]):
            for l, block in enumerate(self.highways):
                s = block(wx[t] if l == 0 else None, s, mask)
            outs.append(s)
        return torch.stack(outs), s


class RHNTrunk(nn.ModuleList):
    """Embeddings (T, B, E) -> last layer's outputs (T, B, out_size), with the family's dropouts.

    A ModuleList of layers, so that on the model (attribute ``rnns``) names read as theirs:
    ``rnns.0.highways.0.W.weight``."""

    def __init__(self, config):
        super().__init__(RecurrentHighway(n_in, width, depth(config), dropout(config, "dropouth"))
                         for n_in, width in config.layer_sizes())
        self.dropouti, self.dropout = dropout(config, "dropouti"), float(config.dropout)
        self.dropoute = dropout(config, "dropoute")
        init = option(config, "rhn_init")
        if init not in INITS:
            raise UserError(f"rhn_init must be one of {', '.join(INITS)}, got {init!r}")
        if init == "zilly":
            self.zilly_init_()

    @torch.no_grad()
    def zilly_init_(self) -> None:
        """The TensorFlow original's init (``rhn_train.py``: ``tf.random_uniform_initializer(-init_scale,
        init_scale)`` for every variable, ``init_scale`` 0.04; ``rhn.py`` ``RHNCell``: ``init_bias`` -2.0 as
        ``bias_start`` of every t gate). The embedding keeps the model's init."""
        for layer in self:
            for block in layer.highways:
                for lin in (block.W, block.R):
                    if lin is not None:
                        nn.init.uniform_(lin.weight, -ZILLY_SCALE, ZILLY_SCALE)
                        nn.init.uniform_(lin.bias, -ZILLY_SCALE, ZILLY_SCALE)
                        lin.bias[block.width:].fill_(ZILLY_BIAS)

    def embed(self, encoder: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        """The model's embedding lookup, with ``dropoute`` in training (their ``RHN.forward``)."""
        return embedded_dropout(encoder.weight, tokens, self.dropoute, self.training)

    def _drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        return x * locked_mask(x, p) if self.training and p else x

    def forward(self, x: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        x = self._drop(x, self.dropouti)
        new = []
        for layer, s in zip(self, state):
            x, s = layer(x, s)
            new.append(s)
            x = self._drop(x, self.dropout)
        return x, new


class RHNSparseTrunk:
    """The runtime's trunk: tokens (T, B) -> last layer's outputs (H, T*B) feature-major (column t*B + b).

    ``kernels.spmm`` computes W x for all time steps at once, ``kernels.rhn_recurrent`` the T x L micro-steps
    (compiled: one call, one barrier per micro-step). Equal to ``RHNTrunk``'s eval forward up to float rounding
    (b_W + b_R0 are folded into the projection)."""

    def __init__(self, exported, matrix, vector, kernels):
        cfg = exported.model_config
        self.kernels = kernels
        self.encoder = matrix("encoder.weight")
        self.layers = []
        for k in range(cfg.layers):
            w, r0 = _prefix(k, 0) + "W.", _prefix(k, 0) + "R."
            proj_bias = (vector(w + "bias") + vector(r0 + "bias")).contiguous()
            rs = [matrix(_prefix(k, l) + "R.weight") for l in range(depth(cfg))]
            biases = [None] + [vector(_prefix(k, l) + "R.bias") for l in range(1, depth(cfg))]
            self.layers.append((matrix(w + "weight"), proj_bias, rs, biases))

    def fused_step(self, decoder, decoder_bias):
        """The compiled one-call batch-1 step (kernels.compiled.RhnStep), with ``decoder`` or the trunk only."""
        from ..kernels.compiled import RhnStep

        return RhnStep(self.kernels, self.encoder, self.layers, decoder, decoder_bias)

    def __call__(self, tokens: torch.Tensor, state):
        from ..runtime.state import State  # the runtime's type; imported late so training never needs it

        T, B = tokens.shape
        dev = self.encoder.device
        ids = tokens.reshape(-1).to(dev, torch.int64).contiguous()
        x = self.kernels.embed(self.encoder, ids)  # (E, T*B)
        new = []
        for (w, proj_bias, rs, biases), s in zip(self.layers, state):
            g = self.kernels.spmm(w, x, proj_bias)  # (2H, T*B): W x + b_W + b_R0, every time step
            s = s.to(dev, torch.float32).t().contiguous()  # (H, B)
            x, s = self.kernels.rhn_recurrent(rs, biases, g, T, B, s)  # the T x L micro-steps
            new.append(s.t().contiguous())
        return x, State(new)


def onnx_trunk(g, weight, vector, config, x: str, states_in: list[str], states_out: list[str]) -> str:
    """Add the trunk to an ONNX graph: embeddings ``x`` (T, B, E) -> the last layer's outputs (T, B, H).

    One ``Scan`` per layer over time (standard ONNX, opset 17): W x + b_W + b_R0 for every step at once
    outside it, the L micro-steps in its body (MatMul, Add, Split, Tanh, Sigmoid, Mul, Sub), whose R_l^T are
    outer-scope values. ``g`` has ``node(op, inputs, output, **attrs)`` and ``const(name, array)``;
    ``weight(name)`` and ``vector(name)`` return the graph value of a stored matrix / bias. ``states_in[k]``
    (B, H_k) is layer k's state, ``states_out[k]`` names its state after the last step."""
    import numpy as np
    from onnx import TensorProto, helper

    one = g.const("rhn.one", np.array(1.0, np.float32))
    for k, (_, width) in enumerate(config.layer_sizes()):
        p = f"rnns.{k}"
        w0, r0 = _prefix(k, 0) + "W.", _prefix(k, 0) + "R."
        wt = g.node("Transpose", [weight(w0 + "weight")], f"{p}.WT", perm=[1, 0])  # (I, 2H)
        b = g.node("Add", [vector(w0 + "bias"), vector(r0 + "bias")], f"{p}.proj_bias")
        gx = g.node("Add", [g.node("MatMul", [x, wt], f"{p}.Wx"), b], f"{p}.gx")  # (T, B, 2H)
        rts = [g.node("Transpose", [weight(_prefix(k, l) + "R.weight")], f"{p}.R{l}T", perm=[1, 0])
               for l in range(depth(config))]

        body, s = [], f"{p}.body.s_in"
        for l, rt in enumerate(rts):
            q = f"{p}.body.l{l}."
            body.append(helper.make_node("MatMul", [s, rt], [q + "Rs"], name=q + "MatMul"))
            other = f"{p}.body.g_t" if l == 0 else vector(_prefix(k, l) + "R.bias")
            body.append(helper.make_node("Add", [q + "Rs", other], [q + "a"], name=q + "Add"))
            body.append(helper.make_node("Split", [q + "a"], [q + "a_h", q + "a_t"], name=q + "Split", axis=1))
            body.append(helper.make_node("Tanh", [q + "a_h"], [q + "h"], name=q + "Tanh"))
            body.append(helper.make_node("Sigmoid", [q + "a_t"], [q + "t"], name=q + "Sigmoid"))
            body.append(helper.make_node("Mul", [q + "h", q + "t"], [q + "ht"], name=q + "Mul_ht"))
            body.append(helper.make_node("Sub", [one, q + "t"], [q + "c"], name=q + "Sub"))  # carry c = 1 - t
            body.append(helper.make_node("Mul", [s, q + "c"], [q + "sc"], name=q + "Mul_sc"))
            body.append(helper.make_node("Add", [q + "ht", q + "sc"], [q + "s"], name=q + "Add_s"))
            s = q + "s"
        body.append(helper.make_node("Identity", [s], [f"{p}.body.s_out"], name=f"{p}.body.s_out/Identity"))
        body.append(helper.make_node("Identity", [s], [f"{p}.body.y"], name=f"{p}.body.y/Identity"))
        f32 = TensorProto.FLOAT
        graph = helper.make_graph(
            body, f"rhn_layer{k}_step",
            [helper.make_tensor_value_info(f"{p}.body.s_in", f32, ["batch", width]),
             helper.make_tensor_value_info(f"{p}.body.g_t", f32, ["batch", 2 * width])],
            [helper.make_tensor_value_info(f"{p}.body.s_out", f32, ["batch", width]),
             helper.make_tensor_value_info(f"{p}.body.y", f32, ["batch", width])])
        x = f"{p}.out"
        g.node("Scan", [states_in[k], gx], [states_out[k], x], body=graph, num_scan_inputs=1)
    return x


def validate(config) -> None:
    depth(config)
    for name in ("dropouti", "dropouth", "dropoute"):
        dropout(config, name)
    if option(config, "rhn_init") not in INITS:
        raise UserError(f"rhn_init must be one of {', '.join(INITS)}, got {option(config, 'rhn_init')!r}")


def _onnx_trunk(graph, exported, x: str, states_in: list[str], states_out: list[str]) -> str:
    """``Family.onnx_trunk`` (export/onnx_graph.py): the export's matrices as stored, its biases in fp32."""
    def vector(name: str) -> str:
        return graph.const(name, exported.dense[name].float().numpy())

    return onnx_trunk(graph, graph.weight_of, vector, exported.model_config, x, states_in, states_out)


register(Family(
    name="rhn",
    title="Recurrent Highway Network (RHN)",
    trunk=RHNTrunk,
    parameter_shapes=parameter_shapes,
    state_layout=lambda config: [(("h", width),) for _, width in config.layer_sizes()],
    gates=GATE_NAMES,
    gate_labels={"h": "candidate h", "t": "transform gate t (carry 1 - t)"},
    module_name="rnns",
    sparse_trunk=RHNSparseTrunk,
    onnx_trunk=_onnx_trunk,
    options=(
        Option("depth", DEFAULTS["depth"], "RHN recurrence depth L: micro-steps per time step (main.py "
               "--nrecurrence_depth)"),
        Option("dropouti", DEFAULTS["dropouti"], "locked dropout on the embeddings (Selfish-RNN/AWD-LSTM --dropouti)"),
        Option("dropouth", DEFAULTS["dropouth"], "dropout between layers; RHN: one mask on the state before every "
               "R_l (--dropouth)"),
        Option("dropoute", DEFAULTS["dropoute"], "embedding dropout: whole vocabulary rows (--dropoute)"),
        Option("rhn_init", DEFAULTS["rhn_init"], "RHN init: 'selfish' (nn.Linear's, as Selfish-RNN) or 'zilly' "
               "(the TensorFlow original: uniform +-0.04, t-gate biases -2.0)"),
    ),
    validate=validate,
    death_rate=0.5,  # their RHN command: --death-rate 0.5
    layout_text="W (2H x I) at micro-step 0 and R_l (2H x H) for l = 0..L-1, rows [h | t]; carry c = 1 - t",
))
