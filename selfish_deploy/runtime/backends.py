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
from ..families import get_decoder, get_family
from ..families.decoders import fused_decoder
from ..model import build_model
from .state import State

BACKENDS = ("sparse", "dense", "onnx")


class Backend:
    name = ""
    kernels_name = ""

    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def step_token(self, token: int, state: State) -> tuple[torch.Tensor, State] | None:
        """A fast path for one token of one sequence: ``forward``'s result, or None (none here; use forward)."""
        return None

    def forward_last(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Log-probabilities (B, V) after the last of ``tokens`` (T, B) only, and the new state (a prefill)."""
        logp, state = self.forward(tokens, state)
        return logp[-1], state

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
        self.device = device
        self.kernels = kernels.kernels_for(device, threads)
        self.kernels_name = self.kernels.name
        dev = device if self.kernels.name == "reference" else torch.device("cpu")
        matrices: dict[str, kernels.Matrix] = {}

        def matrix(name: str) -> kernels.Matrix:
            """One Matrix per stored tensor (a tied decoder shares the embedding's, and its layouts)."""
            if name not in matrices:
                w = exported.weight(name)
                matrices[name] = (kernels.Matrix(csr=w, device=dev, validated=True) if isinstance(w, CSR)  # load_export validated it
                                  else kernels.Matrix(dense=w, device=dev))
            return matrices[name]

        def vector(name: str) -> torch.Tensor:
            return exported.dense[name].to(dev, torch.float32).contiguous()

        # Matrices the export kept dense (density 1.0) run on the same kernels: batch-1 products eight rows at
        # a time, the GEMMs of many columns through PyTorch's BLAS (kernels/compiled.py).
        trunk, head = sparse_parts(exported.model_config)
        self.trunk = trunk(exported, matrix, vector, self.kernels)
        self.head = head(exported, matrix, vector, self.kernels)
        fused = getattr(self.trunk, "fused_step", None)  # batch 1 in one compiled call (not in the reference)
        compiled = self.kernels.name != "reference"
        self.step = fused(*fused_decoder(self.head)) if fused is not None and compiled else None

    def step_token(self, token: int, state):
        """One token of one sequence through the compiled batch-1 step: (logprobs (1, 1, V), state), or None
        when there is none or ``state`` is not in its layout (the engine's fast path for generation)."""
        if self.step is None or not self.step.usable(state):
            return None
        logp, layers = self.step(token, state)
        if logp is None:  # the call ran the trunk only: the head (MoS) on the last layer's output
            last = layers[-1][0] if type(layers[-1]) is tuple else layers[-1]
            logp = self.head(last.view(-1, 1), full=True)["logprobs"]
        return logp.view(1, 1, -1), State(layers)

    def forward(self, tokens, state):
        T, B = tokens.shape
        if T * B == 1:
            out = self.step_token(int(tokens[0, 0]), state)
            if out is not None:
                return out
        x, state = self.trunk(tokens, state)
        return self.head(x, full=True)["logprobs"].view(T, B, -1), state

    def forward_last(self, tokens, state):
        T, B = tokens.shape
        if T == 1:
            return Backend.forward_last(self, tokens, state)
        x, state = self.trunk(tokens, state)  # the decoder runs on the last step's columns only
        return self.head(x[:, (T - 1) * B:].contiguous(), full=True)["logprobs"], state

    def score(self, tokens, targets, state, top1=False, columns=None):
        x, state = self.trunk(tokens, state)
        tg = targets.reshape(-1).to(x.device, torch.int64)
        if columns is not None:
            columns = columns.to(x.device)
            x, tg = x.index_select(1, columns), tg[columns]
        return self.head(x.contiguous(), tg.contiguous(), top1=top1), state


def sparse_parts(config):
    """The sparse backend's trunk and head builders, from ``config``'s family and decoder entries."""
    family, decoder = get_family(config.arch), get_decoder(config.decoder)
    for entry, part in ((family, family.sparse_trunk), (decoder, decoder.sparse_head)):
        if part is None:
            raise UserError(f"the sparse backend cannot run {entry.title} models yet; use backend='dense'")
    return family.sparse_trunk, decoder.sparse_head


class DenseBackend(Backend):
    """The training model's eval forward (``build_model``) on densified weights: the reference, and PyTorch's
    own fast dense path (nn.LSTM/GRU/RNN, MKL/oneDNN on CPU, cuDNN on CUDA)."""

    name = "dense"
    kernels_name = "PyTorch dense"

    def __init__(self, exported: ExportedModel, device: torch.device, threads: int | None):
        self.device = device
        self.model = build_model(exported.model_config).eval()
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                w = exported.weight(n)
                p.copy_(w.to_dense(torch.float32) if isinstance(w, CSR) else w.float())
            self.model.to(device)
            for m in self.model.modules():
                if isinstance(m, torch.nn.RNNBase):
                    m.flatten_parameters()

    def forward(self, tokens, state):
        logp, new = self.model(tokens.to(self.device), list(state.map(lambda t: t.to(self.device))))
        return logp, State(new)


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
