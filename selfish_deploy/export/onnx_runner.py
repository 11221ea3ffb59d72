"""Run an export's ``model.onnx`` in ONNX Runtime (CPU EP): batch-major scoring and step-by-step state.

The state layout is read from the graph's inputs (``{part}0_layer{k}``), so nothing here depends on the
family; a one-step graph (metadata ``one_step``, a cell without an ONNX operator) is run once per position.
"""

from __future__ import annotations

from pathlib import Path

import re

import numpy as np

from ..errors import UserError
from ..exportdir import EXPORT_FORMAT_VERSION
from .onnx_graph import LOGPROBS, ONNX_FILE, TOKENS

OnnxState = list  # per layer: h (B, H), or a tuple of its parts ((h, c) for LSTM); float32 numpy arrays
STATE_INPUT = re.compile(r"^(\w+?)0_layer(\d+)$")


def _numpy(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class OnnxLM:
    """``model.onnx`` in an ``onnxruntime.InferenceSession``, with the same state layout as ``SparseLM``."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort  # imported here: the CSR runtime does not need it

        path = Path(path)
        if path.is_dir():
            path = path / ONNX_FILE
        if not path.is_file():
            raise UserError(f"ONNX model not found: {path} (export with selfish-export --onnx)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidProtobuf, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path} is not a loadable ONNX model: {first}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        version = meta.get("export_format_version")
        if version != str(EXPORT_FORMAT_VERSION):
            raise UserError(f"{path}: export format version {version} is not supported "
                            f"(this version reads {EXPORT_FORMAT_VERSION})")
        self.path = path
        self.metadata = dict(meta)
        self.arch = meta.get("arch", "")
        self.one_step = meta.get("one_step") == "true"
        inputs = self.session.get_inputs()
        self.state_inputs = [i.name for i in inputs if i.name != TOKENS]
        self.state_outputs = [o.name for o in self.session.get_outputs() if o.name != LOGPROBS]
        self.widths = {i.name: int(i.shape[1]) for i in inputs if i.name != TOKENS}
        self.layer_of = []  # layer index of each state input, in graph order
        for name in self.state_inputs:
            m = STATE_INPUT.match(name)
            if m is None:
                raise UserError(f"{path}: unexpected graph input {name!r} (state inputs are PART0_layerK)")
            self.layer_of.append(int(m.group(2)))
        self.parts = [self.layer_of.count(k) for k in range(max(self.layer_of, default=-1) + 1)]

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> "OnnxLM":
        """From an export directory or a ``.onnx`` file."""
        return cls(path, threads)

    @property
    def layers(self) -> int:
        return len(self.parts)

    def init_state(self, batch_size: int) -> OnnxState:
        zeros = [np.zeros((batch_size, self.widths[n]), np.float32) for n in self.state_inputs]
        return self._group(zeros)

    def _group(self, flat: list[np.ndarray]) -> OnnxState:
        """Flat state tensors (graph order) -> per layer one array, or a tuple when it has several parts."""
        out, i = [], 0
        for n in self.parts:
            out.append(flat[i] if n == 1 else tuple(flat[i:i + n]))
            i += n
        return out

    def forward(self, tokens, state: OnnxState | None = None) -> tuple[np.ndarray, OnnxState]:
        """Log-probabilities (B, T, V) for token ids (B, T) (numpy or torch) and the state after them."""
        tokens = _numpy(tokens, np.int64)
        if tokens.ndim != 2:
            raise UserError(f"tokens must be [batch, seq], got shape {tokens.shape}")
        if state is None:
            state = self.init_state(tokens.shape[0])
        flat = [s for layer in state for s in (layer if isinstance(layer, tuple) else (layer,))]
        if len(flat) != len(self.state_inputs):
            raise UserError(f"state has {len(flat)} tensors, the model expects {len(self.state_inputs)}")
        flat = [_numpy(s, np.float32) for s in flat]
        if not self.one_step:
            logp, *flat = self.session.run([LOGPROBS, *self.state_outputs], self._feeds(tokens, flat))
            return logp, self._group(flat)
        steps = []  # a one-step graph: position by position, each step's states into the next
        for t in range(tokens.shape[1]):
            lp, *flat = self.session.run([LOGPROBS, *self.state_outputs], self._feeds(tokens[:, t:t + 1], flat))
            steps.append(lp)
        V = self.session.get_outputs()[0].shape[-1]
        logp = np.concatenate(steps, axis=1) if steps else np.zeros((tokens.shape[0], 0, V), np.float32)
        return logp, self._group(flat)

    def _feeds(self, tokens: np.ndarray, flat: list[np.ndarray]) -> dict:
        return {TOKENS: np.ascontiguousarray(tokens), **dict(zip(self.state_inputs, flat))}
