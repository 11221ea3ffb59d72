"""The three ways to run an export: ``sparse`` (the package's kernels on the stored CSR matrices), ``dense``
(PyTorch's nn.LSTM/GRU/RNN on densified weights: the reference) and ``onnx`` (``model.onnx`` in ONNX Runtime).

Each backend has ``forward(tokens (T, B), state) -> (logprobs (T, B, V), state)`` and
``score(tokens, targets, state, top1, columns) -> ({"target_lp", "argmax", "max_lp"}, state)``, the fast path
for scoring that never materialises (T, B, V) in the sparse backend.
"""

from __future__ import annotations

import torch

from .. import kernels
from ..csr import CSR
from ..errors import UserError
from ..exportdir import ExportedModel
from ..model import RNNLM
from .state import State

BACKENDS = ("sparse", "dense", "onnx")


class Backend:
    name = ""
    kernels_name = ""

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def score(self, tokens: torch.Tensor, targets: torch.Tensor, state: State, top1: bool = False,
              columns: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], State]:
        """Log-probability of ``targets`` (T, B) after ``tokens`` (T, B), at the flat positions ``columns``
        (n = t * B + b; all when None); with ``top1`` also the most likely token and its log-probability."""
        logp, state = self.forward(tokens, state)
        flat = logp.reshape(-1, logp.shape[-1])
        tg = targets.reshape(-1).to(flat.device)
        if columns is not None:
            flat, tg = flat[columns], tg[columns]
        out = {"target_lp": flat.gather(1, tg.view(-1, 1)).view(-1)}
        if top1:
            out["max_lp"], out["argmax"] = flat.max(dim=1)
        return out, state


class SparseBackend(Backend):
    """CSR matrices as stored (uint16/int32 indices, fp32/fp16/bf16 values), computed in fp32 by the compiled
    CPU kernels, or by the PyTorch reference (CUDA, or no compiler at install time)."""

    name = "sparse"

    def __init__(self, exported: ExportedModel, device: torch.device, threads: int | None):
        cfg = exported.model_config
        self.device, self.cell = device, cfg.arch
        self.kernels = kernels.kernels_for(device, threads)
        self.kernels_name = self.kernels.name
        dev = device if self.kernels.name == "reference" else torch.device("cpu")

        def matrix(name: str) -> kernels.Matrix:
            w = exported.weight(name)
            if isinstance(w, CSR):  # load_export validated it
                return kernels.Matrix(csr=w, device=dev, validated=True)
            return kernels.Matrix(dense=w, device=dev)

        def vector(name: str) -> torch.Tensor:
            return exported.dense[name].to(dev, torch.float32).contiguous()

        # An export with no sparse matrix at all (density 1.0): sequences go through nn.LSTM/GRU/RNN (PyTorch's
        # fused dense recurrence beats ours there); single steps stay on our kernels. The kernels' matrices are
        # the module's own parameters: no second copy.
        self.dense = DenseBackend(exported, device, threads) if not exported.sparse else None
        if self.dense is not None:  # the export then holds the module's tensors: the loaded copies are freed
            exported.dense.update({n: p.detach() for n, p in self.dense.model.named_parameters()})
        self.encoder = matrix("encoder.weight")
        self.decoder = self.encoder if cfg.tie_weights else matrix("decoder.weight")
        self.decoder_bias = vector("decoder.bias")
        self.layers = []
        for k in range(cfg.layers):
            p = f"rnns.{k}."
            b_ih, b_hh = vector(p + "bias_ih_l0"), vector(p + "bias_hh_l0")
            if self.cell == "gru":  # b_hn stays inside r * (.): b_hh goes to the cell
                proj_bias, cell_bias = b_ih, b_hh
            else:
                proj_bias, cell_bias = (b_ih + b_hh).contiguous(), None
            self.layers.append((matrix(p + "weight_ih_l0"), proj_bias, matrix(p + "weight_hh_l0"), cell_bias))

    def _trunk(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Last layer's outputs (H, T*B), feature-major, and the new state."""
        T, B = tokens.shape
        dev = self.encoder.device
        ids = tokens.reshape(-1).to(dev, torch.int64).contiguous()
        x = self.kernels.embed(self.encoder, ids)  # (E, T*B)
        new = []
        for (w_ih, proj_bias, w_hh, cell_bias), layer in zip(self.layers, state):
            g = self.kernels.spmm(w_ih, x, proj_bias)  # (G*H, T*B): every time step at once
            h, c = (layer if isinstance(layer, tuple) else (layer, None))
            h = h.to(dev, torch.float32).t().contiguous()
            c = c.to(dev, torch.float32).t().contiguous() if c is not None else None
            x, h, c = self.kernels.recurrent(self.cell, w_hh, cell_bias, g, T, B, h, c)
            new.append((h.t().contiguous(), c.t().contiguous()) if c is not None else h.t().contiguous())
        return x, State(new)

    def forward(self, tokens, state):
        T, B = tokens.shape
        if self.dense is not None and T * B > 1:
            return self.dense.forward(tokens, state)
        x, state = self._trunk(tokens, state)
        out = self.kernels.decoder(self.decoder, self.decoder_bias, x, full=True)
        return out["logprobs"].view(T, B, -1), state

    def score(self, tokens, targets, state, top1=False, columns=None):
        if self.dense is not None:
            return Backend.score(self, tokens, targets, state, top1, columns)
        x, state = self._trunk(tokens, state)
        tg = targets.reshape(-1).to(x.device, torch.int64)
        if columns is not None:
            columns = columns.to(x.device)
            x, tg = x.index_select(1, columns), tg[columns]
        out = self.kernels.decoder(self.decoder, self.decoder_bias, x.contiguous(), tg.contiguous(), top1=top1)
        return out, state


class DenseBackend(Backend):
    """The training model's eval forward (``RNNLM``) on densified weights: the reference, and PyTorch's own
    fast dense path (nn.LSTM/GRU/RNN, MKL/oneDNN on CPU, cuDNN on CUDA)."""

    name = "dense"
    kernels_name = "PyTorch dense"

    def __init__(self, exported: ExportedModel, device: torch.device, threads: int | None):
        self.device = device
        self.model = RNNLM(exported.model_config).eval()
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                w = exported.weight(n)
                p.copy_(w.to_dense(torch.float32) if isinstance(w, CSR) else w.float())
            self.model.to(device)
            for rnn in self.model.rnns:
                rnn.flatten_parameters()

    def forward(self, tokens, state):
        st = [tuple(t.unsqueeze(0).to(self.device) for t in layer) if isinstance(layer, tuple)
              else layer.unsqueeze(0).to(self.device) for layer in state]
        logits, new = self.model(tokens.to(self.device), st)
        new = State(tuple(t[0] for t in layer) if isinstance(layer, tuple) else layer[0] for layer in new)
        return torch.log_softmax(logits, dim=-1), new


class OnnxBackend(Backend):
    """``model.onnx`` (written by ``selfish-export --onnx``) in ONNX Runtime's CPU execution provider."""

    name = "onnx"
    kernels_name = "ONNX Runtime (dense)"

    def __init__(self, exported: ExportedModel, device: torch.device, threads: int | None):
        from ..export.onnx_runner import OnnxLM

        if device.type != "cpu":
            raise UserError("the onnx backend runs on the CPU; use backend='sparse' or 'dense' on CUDA")
        if exported.path is None or not (exported.path / "model.onnx").is_file():
            raise UserError(f"{exported.path}: no model.onnx (export with selfish-export --onnx)")
        self.device = device
        self.onnx = OnnxLM.load(exported.path, threads=threads)

    def forward(self, tokens, state):
        flat = [t.detach().cpu().numpy() for layer in state for t in (layer if isinstance(layer, tuple) else (layer,))]
        parts = 2 if isinstance(state[0], tuple) else 1
        grouped = [tuple(flat[k * parts:(k + 1) * parts]) if parts == 2 else flat[k] for k in range(len(state))]
        logp, new = self.onnx.forward(tokens.t().cpu().numpy(), grouped)
        new = State(tuple(torch.from_numpy(t) for t in layer) if isinstance(layer, tuple) else torch.from_numpy(layer)
                    for layer in new)
        return torch.from_numpy(logp).permute(1, 0, 2), new


def make_backend(name: str, exported: ExportedModel, device: torch.device, threads: int | None) -> Backend:
    classes = {"sparse": SparseBackend, "dense": DenseBackend, "onnx": OnnxBackend}
    if name not in classes:
        raise UserError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    return classes[name](exported, device, threads)
