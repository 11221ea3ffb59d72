"""Run an export's ``model.onnx`` in ONNX Runtime (CPU EP): batch-major scoring and step-by-step state."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from ..exportdir import EXPORT_FORMAT_VERSION
from .onnx_graph import LOGPROBS, ONNX_FILE, TOKENS

OnnxState = list  # per layer: h (B, H), or (h, c) for LSTM; float32 numpy arrays


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
        inputs = self.session.get_inputs()
        self.state_inputs = [i.name for i in inputs if i.name != TOKENS]
        self.state_outputs = [o.name for o in self.session.get_outputs() if o.name != LOGPROBS]
        self.widths = {i.name: int(i.shape[1]) for i in inputs if i.name != TOKENS}
        self.parts = 2 if self.arch == "lstm" else 1

    @classmethod
    def load(cls, path: str | Path, threads: int | None = None) -> "OnnxLM":
        """From an export directory or a ``.onnx`` file."""
        return cls(path, threads)

    @property
    def layers(self) -> int:
        return len(self.state_inputs) // self.parts

    def init_state(self, batch_size: int) -> OnnxState:
        zeros = [np.zeros((batch_size, self.widths[n]), np.float32) for n in self.state_inputs]
        return self._group(zeros)

    def _group(self, flat: list[np.ndarray]) -> OnnxState:
        if self.parts == 1:
            return list(flat)
        return [tuple(flat[k * self.parts:(k + 1) * self.parts]) for k in range(self.layers)]

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
        feeds = {TOKENS: tokens, **{n: _numpy(s, np.float32) for n, s in zip(self.state_inputs, flat)}}
        logp, *new = self.session.run([LOGPROBS, *self.state_outputs], feeds)
        return logp, self._group(new)
