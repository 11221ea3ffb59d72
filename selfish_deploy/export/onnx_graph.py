"""Build ``model.onnx`` from an export: standard ONNX operators (opset 17) that ONNX Runtime runs on its CPU EP.

Interface (batch-major, unlike the time-major PyTorch model and runtime; ``batch`` and ``seq`` are dynamic,
so one graph scores a whole text in one call or generates one token per call)::

    inputs   tokens        int64  [batch, seq]
             h0_layer{k}   float  [batch, width_k]     every layer k
             c0_layer{k}   float  [batch, width_k]     LSTM only
    outputs  logprobs      float  [batch, seq, vocab]  log-softmax over the vocabulary
             hn_layer{k}   float  [batch, width_k]     state after the last token: feed back as h0_layer{k}
             cn_layer{k}   float  [batch, width_k]     LSTM only

Graph: ``Transpose(tokens) -> Gather(encoder) -> [LSTM|GRU|RNN] x layers -> Transpose -> Gemm(decoder,
transB=1) -> LogSoftmax``, with ``Reshape``/``Squeeze``/``Unsqueeze`` around them. PyTorch stacks gates
as [i|f|g|o] (LSTM) and [r|z|n] (GRU); ONNX wants [i|o|f|c] and [z|r|h], so row blocks are permuted here::

    PyTorch weight_ih_l0 (4H, I)      ONNX W (1, 4H, I)        same permutation for R (weight_hh)
      [ i ]  rows 0..H                  [ i ]                  and for both halves of
      [ f ]  rows H..2H          ->     [ o ]                  B = [Wb | Rb] (1, 8H)
      [ g ]                             [ f ]
      [ o ]                             [ c ] (= g)

GRU uses ``linear_before_reset=1`` (PyTorch's b_hn inside r * (.)); ``rnn_relu`` is ONNX RNN with Relu.

Weights keep the export's dtype: fp16/bf16 initializers are followed by a ``Cast`` to float (ORT folds it
at load), so the graph computes in fp32 on the same rounded values as ``SparseLM``; biases stay fp32.

Sparse initializers (``sparse=True``): every CSR matrix of the export becomes a ``SparseTensorProto`` in
``graph.sparse_initializer`` (values in the export dtype, int64 linearized indices, as the ONNX spec
requires). Each alive weight then costs its value plus 8 index bytes, so the file is smaller than dense
only below density 4/12 = 0.33 (fp32) or 2/10 = 0.2 (fp16/bf16). ONNX Runtime converts every sparse
initializer into a dense initializer when it builds the graph (onnxruntime/core/graph/graph.cc; measured in
benchmarks/export_size.py: a session adds more memory than with dense initializers, 211 vs 137 MiB at
density 0.33, and loads no faster), so they shrink the file on disk and on the wire, not the memory or the
compute: for sparse compute use the CSR runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..csr import CSR
from ..errors import UserError
from ..exportdir import EXPORT_FORMAT_VERSION, ExportedModel
from ..model import GATES

OPSET = 17
PROTOBUF_LIMIT = 2**31  # bytes: a larger model.onnx would need ONNX external data files
ONNX_FILE = "model.onnx"
TOKENS, LOGPROBS = "tokens", "logprobs"
# Rows of ONNX's gate blocks, as indices into PyTorch's: LSTM [i,f,g,o] -> [i,o,f,c]; GRU [r,z,n] -> [z,r,h].
GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn_tanh": (0,), "rnn_relu": (0,)}


def state_names(arch: str, layers: int) -> tuple[list[str], list[str]]:
    """Names of the state inputs and outputs, in graph order: h (and c) for layer 0, then layer 1, ..."""
    parts = ("h", "c") if arch == "lstm" else ("h",)
    inputs = [f"{p}0_layer{k}" for k in range(layers) for p in parts]
    outputs = [f"{p}n_layer{k}" for k in range(layers) for p in parts]
    return inputs, outputs


def _permute_gates(t: torch.Tensor, arch: str) -> torch.Tensor:
    """Reorder the gate row blocks of a (G*H, ...) tensor from PyTorch's order to ONNX's."""
    blocks = t.chunk(GATES[arch], dim=0)
    return torch.cat([blocks[i] for i in GATE_ORDER[arch]], dim=0)


def _tensor_proto(name: str, t: torch.Tensor) -> TensorProto:
    """A dense TensorProto; bf16 goes through its raw bits (numpy has no bfloat16)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return helper.make_tensor(name, TensorProto.BFLOAT16, list(t.shape),
                                  t.view(torch.int16).numpy().tobytes(), raw=True)
    return numpy_helper.from_array(t.numpy(), name)


def _sparse_proto(name: str, values: torch.Tensor, mask: torch.Tensor) -> onnx.SparseTensorProto:
    """``values`` (any shape) at the positions of ``mask`` as a SparseTensorProto, linearized int64 indices."""
    flat_mask = mask.reshape(-1)
    indices = flat_mask.nonzero().view(-1)  # ascending, as the spec requires
    vals = _tensor_proto(name, values.reshape(-1)[indices])
    idx = numpy_helper.from_array(indices.numpy().astype(np.int64), name + ".indices")
    return helper.make_sparse_tensor(vals, idx, list(mask.shape))


class _Graph:
    """Accumulates nodes and initializers; ``weight`` adds a (possibly sparse, possibly fp16) matrix."""

    def __init__(self, sparse: bool):
        self.sparse = sparse
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.sparse_initializers: list[onnx.SparseTensorProto] = []

    def node(self, op: str, inputs: list[str], output: str | list[str], **attrs) -> str:
        outputs = [output] if isinstance(output, str) else output
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0] + "/" + op, **attrs))
        return outputs[0]

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def weight(self, name: str, dense: torch.Tensor, mask: torch.Tensor | None) -> str:
        """Store ``dense`` (mask: its alive entries, None: dense) and return a float32 value name."""
        if self.sparse and mask is not None:
            self.sparse_initializers.append(_sparse_proto(name, dense, mask))
        else:
            self.initializers.append(_tensor_proto(name, dense))
        if dense.dtype == torch.float32:
            return name
        return self.node("Cast", [name], name + ".fp32", to=TensorProto.FLOAT)


def _matrix(exported: ExportedModel, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A weight matrix of the export, dense in its stored dtype, and its mask (None when stored dense)."""
    w = exported.weight(name)
    if isinstance(w, CSR):
        return w.to_dense(), w.mask()
    return w, None


def build_onnx(exported: ExportedModel, sparse: bool = False) -> onnx.ModelProto:
    """The ONNX model of ``exported`` (see the module docstring for its interface)."""
    cfg = exported.model_config
    arch, V = cfg.arch, cfg.vocab_size
    g = _Graph(sparse)
    h_in, h_out = state_names(arch, cfg.layers)
    parts = 2 if arch == "lstm" else 1

    enc_w, enc_m = _matrix(exported, "encoder.weight")
    encoder = g.weight("encoder.weight", enc_w, enc_m)  # (V, E)
    axis0, axis1 = g.const("axes0", np.array([0], np.int64)), g.const("axes1", np.array([1], np.int64))
    tokens_tb = g.node("Transpose", [TOKENS], "tokens_tb", perm=[1, 0])  # (T, B)
    x = g.node("Gather", [encoder, tokens_tb], "emb", axis=0)  # (T, B, E)

    for k, (_, width) in enumerate(cfg.layer_sizes()):
        p = f"rnns.{k}"
        ws = []
        for src, dst in (("weight_ih", "W"), ("weight_hh", "R")):
            w, m = _matrix(exported, f"{p}.{src}_l0")
            w = _permute_gates(w, arch).unsqueeze(0)  # (1, G*H, in)
            m = None if m is None else _permute_gates(m, arch).unsqueeze(0)
            ws.append(g.weight(f"{p}.{dst}", w, m))
        bias = torch.cat([_permute_gates(exported.dense[f"{p}.bias_{s}_l0"].float(), arch) for s in ("ih", "hh")])
        b = g.const(f"{p}.B", bias.unsqueeze(0).numpy())  # (1, 2*G*H)
        states = [g.node("Unsqueeze", [h_in[k * parts + j], axis0], f"{p}.state{j}_in") for j in range(parts)]
        outs = [f"{p}.Y", f"{p}.Y_h"] + ([f"{p}.Y_c"] if arch == "lstm" else [])
        common = dict(hidden_size=width)
        if arch == "lstm":
            g.node("LSTM", [x, *ws, b, "", *states], outs, **common)
        elif arch == "gru":
            g.node("GRU", [x, *ws, b, "", *states], outs, linear_before_reset=1, **common)
        else:
            g.node("RNN", [x, *ws, b, "", *states], outs, **common,
                   activations=["Tanh" if arch == "rnn_tanh" else "Relu"])
        x = g.node("Squeeze", [outs[0], axis1], f"{p}.out")  # (T, 1, B, H) -> (T, B, H)
        for j in range(parts):
            g.node("Squeeze", [outs[1 + j], axis0], h_out[k * parts + j])  # (1, B, H) -> (B, H)

    H = cfg.out_size
    x = g.node("Transpose", [x], "out_bt", perm=[1, 0, 2])  # (B, T, H)
    x = g.node("Reshape", [x, g.const("shape_nh", np.array([-1, H], np.int64))], "out_flat")  # (B*T, H)
    if cfg.tie_weights:
        dec = encoder
    else:
        dec = g.weight("decoder.weight", *_matrix(exported, "decoder.weight"))
    dec_b = g.const("decoder.bias", exported.dense["decoder.bias"].float().numpy())
    logits = g.node("Gemm", [x, dec, dec_b], "logits_flat", transB=1)  # (B*T, V)
    logp = g.node("LogSoftmax", [logits], "logprobs_flat", axis=1)
    bt = g.node("Shape", [TOKENS], "tokens_shape")
    out_shape = g.node("Concat", [bt, g.const("vocab", np.array([V], np.int64))], "logprobs_shape", axis=0)
    g.node("Reshape", [logp, out_shape], LOGPROBS)  # (B, T, V)

    widths = [w for _, w in cfg.layer_sizes() for _ in range(parts)]
    inputs = [helper.make_tensor_value_info(TOKENS, TensorProto.INT64, ["batch", "seq"])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w]) for n, w in zip(h_in, widths)]
    outputs = [helper.make_tensor_value_info(LOGPROBS, TensorProto.FLOAT, ["batch", "seq", V])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w]) for n, w in zip(h_out, widths)]
    graph = helper.make_graph(g.nodes, "selfish_rnnlm", inputs, outputs, initializer=g.initializers,
                              sparse_initializer=g.sparse_initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="selfish-deploy", doc_string=f"{arch} language model, see model card")
    model.ir_version = 8  # opset 17's IR: loadable by older runtimes than the installed onnx's default
    meta = {"export_format_version": str(EXPORT_FORMAT_VERSION), "arch": arch, "layers": str(cfg.layers),
            "vocab_size": str(V), "dtype": str(exported.config.get("dtype", "fp32")),
            "density": str(exported.config.get("density", "")),
            "source_run": str(exported.config.get("source_run", "")),
            "sparse_initializers": str(bool(sparse)).lower()}
    helper.set_model_props(model, meta)
    if model.ByteSize() >= PROTOBUF_LIMIT:
        raise UserError(f"the ONNX model would take {model.ByteSize() / 2**30:.2f} GiB, over protobuf's 2 GiB "
                        "limit for one file; export a sparser model or use --onnx-sparse-initializers")
    onnx.checker.check_model(model)
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path) -> int:
    """Write ``model`` atomically; returns the file size in bytes."""
    path = Path(path)
    tmp = path.with_suffix(".onnx.tmp")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(path)
    return path.stat().st_size


def onnx_summary(path: str | Path) -> dict:
    """Opset and initializer counts of a written ``model.onnx`` (for the size report)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model: {e}") from None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "sparse_initializers": len(model.graph.sparse_initializer),
            "dense_initializers": len(model.graph.initializer)}
