"""Build ``model.onnx`` from an export: standard ONNX operators (opset 17) that ONNX Runtime runs on its CPU EP.

Interface (batch-major, unlike the time-major PyTorch model and runtime; ``batch`` and ``seq`` are dynamic,
so one graph scores a whole text in one call or generates one token per call)::

    inputs   tokens            int64  [batch, seq]          (seq is 1 in a one-step graph, see below)
             {part}0_layer{k}  float  [batch, width]        every part of every layer's state, in the family's
                                                            ``state_layout`` order: h0_layer0, c0_layer0 (LSTM),
                                                            h0_layer1, ...
    outputs  logprobs          float  [batch, seq, vocab]   log-softmax over the vocabulary
             {part}n_layer{k}  float  [batch, width]        state after the last token: feed back as {part}0_layer{k}

Graph: ``Transpose(tokens) -> Gather(encoder) -> trunk -> Transpose -> Reshape -> head -> Reshape``. The
trunk and the head are the registry's builders (``selfish_deploy.families``):

- ``Family.onnx_trunk(graph, exported, x, states_in, states_out) -> str``. ``graph`` is an ``OnnxGraph``
  (below), ``x`` the name of the embedded input (T, B, E) float, ``states_in`` the state inputs (B, width) in
  ``state_names`` order. The builder adds its nodes, produces every name in ``states_out`` (same order) and
  returns the name of its output (T, B, out_size). The stacked cells use ONNX's ``LSTM``/``GRU``/``RNN``
  operators (families/stacked.py).
- A cell without an ONNX operator sets ``Family.onnx_one_step = True`` and builds one time step: ``x`` is then
  (1, B, E) (``Squeeze`` it, compute with standard operators, ``Unsqueeze`` the output back to (1, B, out)).
  The graph's ``tokens`` input is ``[batch, 1]``, its metadata says ``one_step: true``, and
  ``OnnxLM.forward`` runs it once per position, each step's states feeding the next: callers see the same
  interface.
- ``Decoder.onnx_head(graph, exported, x) -> str``: ``x`` is (B*T, out_size) float, rows batch-major; returns
  the name of the log-probabilities (B*T, V) (softmax: ``Gemm`` + ``LogSoftmax``, families/decoders.py).

``OnnxGraph`` gives builders ``node``, ``const``, ``axes`` (the int64 axes constant of Squeeze/Unsqueeze),
``matrix`` (an export tensor, dense in its stored dtype, with its mask), ``weight`` (store a tensor, sparse or
dense, get a float32 value) and ``weight_of`` (an export tensor as stored, added once however often it is
used: the tied embedding).

PyTorch stacks gates as [i|f|g|o] (LSTM) and [r|z|n] (GRU); ONNX wants [i|o|f|c] and [z|r|h], so the stacked
builder permutes row blocks::

    PyTorch weight_ih_l0 (4H, I)      ONNX W (1, 4H, I)        same permutation for R (weight_hh)
      [ i ]  rows 0..H                  [ i ]                  and for both halves of
      [ f ]  rows H..2H          ->     [ o ]                  B = [Wb | Rb] (1, 8H)
      [ g ]                             [ f ]
      [ o ]                             [ c ] (= g)

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
from ..families import get_decoder, get_family

OPSET = 17
PROTOBUF_LIMIT = 2**31  # bytes: a larger model.onnx would need ONNX external data files
ONNX_FILE = "model.onnx"
TOKENS, LOGPROBS = "tokens", "logprobs"


def state_names(config) -> tuple[list[str], list[str]]:
    """Names of the state inputs and outputs, in graph order: layer 0's parts (h, then c), layer 1's, ..."""
    layout = get_family(config.arch).state_layout(config)
    inputs = [f"{p}0_layer{k}" for k, parts in enumerate(layout) for p, _ in parts]
    outputs = [f"{p}n_layer{k}" for k, parts in enumerate(layout) for p, _ in parts]
    return inputs, outputs


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


class OnnxGraph:
    """Nodes and initializers of the graph being built: what the builders write into (module docstring)."""

    def __init__(self, exported: ExportedModel, sparse: bool):
        self.exported, self.sparse = exported, sparse
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.sparse_initializers: list[onnx.SparseTensorProto] = []
        self._added: dict[str, str] = {}  # export tensor or axes constant -> its value name

    def node(self, op: str, inputs: list[str], output: str | list[str], **attrs) -> str:
        """Add an ``op`` node; returns the name of its first output."""
        outputs = [output] if isinstance(output, str) else output
        self.nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0] + "/" + op, **attrs))
        return outputs[0]

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def axes(self, axis: int) -> str:
        """The int64 ``[axis]`` constant Squeeze/Unsqueeze take, added once."""
        key = f"axes{axis}"
        if key not in self._added:
            self._added[key] = self.const(key, np.array([axis], np.int64))
        return self._added[key]

    def weight(self, name: str, dense: torch.Tensor, mask: torch.Tensor | None) -> str:
        """Store ``dense`` (mask: its alive entries, None: dense) and return a float32 value name."""
        if self.sparse and mask is not None:
            self.sparse_initializers.append(_sparse_proto(name, dense, mask))
        else:
            self.initializers.append(_tensor_proto(name, dense))
        if dense.dtype == torch.float32:
            return name
        return self.node("Cast", [name], name + ".fp32", to=TensorProto.FLOAT)

    def matrix(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The export's tensor ``name``, dense in its stored dtype, and its mask (None when stored dense)."""
        w = self.exported.weight(name)
        if isinstance(w, CSR):
            return w.to_dense(), w.mask()
        return w, None

    def weight_of(self, name: str) -> str:
        """The export's tensor ``name`` as stored, as a float32 value; its initializer is added once."""
        if name not in self._added:
            self._added[name] = self.weight(name, *self.matrix(name))
        return self._added[name]


def build_onnx(exported: ExportedModel, sparse: bool = False) -> onnx.ModelProto:
    """The ONNX model of ``exported`` (see the module docstring for its interface)."""
    cfg = exported.model_config
    family, head = get_family(cfg.arch), get_decoder(cfg.decoder)
    if family.onnx_trunk is None or head.onnx_head is None:
        missing = f"--arch {cfg.arch}" if family.onnx_trunk is None else f"--decoder {cfg.decoder}"
        raise UserError(f"{missing} has no ONNX export yet; export without --onnx")
    V = cfg.vocab_size
    g = OnnxGraph(exported, sparse)
    h_in, h_out = state_names(cfg)

    encoder = g.weight_of("encoder.weight")  # (V, E)
    tokens_tb = g.node("Transpose", [TOKENS], "tokens_tb", perm=[1, 0])  # (T, B)
    x = g.node("Gather", [encoder, tokens_tb], "emb", axis=0)  # (T, B, E)
    x = family.onnx_trunk(g, exported, x, h_in, h_out)  # (T, B, H)

    H = family.output_size(cfg)
    x = g.node("Transpose", [x], "out_bt", perm=[1, 0, 2])  # (B, T, H)
    x = g.node("Reshape", [x, g.const("shape_nh", np.array([-1, H], np.int64))], "out_flat")  # (B*T, H)
    logp = head.onnx_head(g, exported, x)  # (B*T, V)
    bt = g.node("Shape", [TOKENS], "tokens_shape")
    out_shape = g.node("Concat", [bt, g.const("vocab", np.array([V], np.int64))], "logprobs_shape", axis=0)
    g.node("Reshape", [logp, out_shape], LOGPROBS)  # (B, T, V)

    widths = [w for parts in family.state_layout(cfg) for _, w in parts]
    seq = 1 if family.onnx_one_step else "seq"
    inputs = [helper.make_tensor_value_info(TOKENS, TensorProto.INT64, ["batch", seq])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w]) for n, w in zip(h_in, widths)]
    outputs = [helper.make_tensor_value_info(LOGPROBS, TensorProto.FLOAT, ["batch", seq, V])]
    outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", w]) for n, w in zip(h_out, widths)]
    graph = helper.make_graph(g.nodes, "selfish_rnnlm", inputs, outputs, initializer=g.initializers,
                              sparse_initializer=g.sparse_initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="selfish-deploy",
                              doc_string=f"{cfg.arch} language model ({cfg.decoder} decoder), see model card")
    model.ir_version = 8  # opset 17's IR: loadable by older runtimes than the installed onnx's default
    meta = {"export_format_version": str(EXPORT_FORMAT_VERSION), "arch": cfg.arch, "decoder": cfg.decoder,
            "layers": str(cfg.layers), "vocab_size": str(V), "dtype": str(exported.config.get("dtype", "fp32")),
            "density": str(exported.config.get("density", "")),
            "source_run": str(exported.config.get("source_run", "")),
            "sparse_initializers": str(bool(sparse)).lower(), "one_step": str(family.onnx_one_step).lower()}
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
