"""Inference on an export directory with sparse kernels: the engine behind the server.

Knows nothing of HTTP or training. ``forward`` takes token ids (T, B) and a state, and returns
log-probabilities (T, B, V) and the new state; ``score`` and ``generate`` work on text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import kernels
from .cells import STEPS
from .exportdir import ExportedModel, load_export
from .sampling import sample_next

State = list  # per layer: h (B, H), or (h, c) for LSTM


@dataclass
class Score:
    tokens: list[str]
    logprobs: list[float]
    log_likelihood: float
    perplexity: float
    unknown: list[str]


class SparseLM:
    """An exported model ready to run: CSR matrices stay sparse, computed in fp32."""

    def __init__(self, exported: ExportedModel, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.exported = exported
        self.config = exported.model_config
        self.vocab = exported.vocab
        self.step = STEPS[self.config.arch]
        w = {n: c.to_torch(self.device, torch.float32) for n, c in exported.sparse.items()}
        w.update({n: t.to(self.device, torch.float32) for n, t in exported.dense.items()})
        self.weights = w
        self.encoder = w["encoder.weight"]
        self.decoder = w["encoder.weight"] if self.config.tie_weights else w["decoder.weight"]
        self.decoder_bias = w["decoder.bias"]
        self.layers = [
            tuple(w[f"rnns.{k}.{p}_l0"] for p in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))
            for k in range(self.config.layers)
        ]

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "SparseLM":
        return cls(load_export(path), device)

    def init_state(self, batch_size: int) -> State:
        state = []
        for _, n_out in self.config.layer_sizes():
            h = torch.zeros(batch_size, n_out, device=self.device)
            state.append((h, h.clone()) if self.config.arch == "lstm" else h)
        return state

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        T, B = tokens.shape
        x = kernels.embedding(self.encoder, tokens.to(self.device)).view(T * B, -1)  # (T*B, E)
        new_state = []
        for (w_ih, b_ih, w_hh, b_hh), s in zip(self.layers, state):
            gi = kernels.linear(x, w_ih, b_ih).view(T, B, -1)  # all time steps at once
            outs = []
            for t in range(T):
                h_prev = s[0] if isinstance(s, tuple) else s
                h, s = self.step(gi[t], kernels.linear(h_prev, w_hh, b_hh), s)
                outs.append(h)
            new_state.append(s)
            x = torch.stack(outs).view(T * B, -1)
        logits = kernels.linear(x, self.decoder, self.decoder_bias)
        return torch.log_softmax(logits, dim=-1).view(T, B, -1), new_state

    def score(self, text: str) -> Score:
        """Log-probability of every word of ``text`` and of each line's ``<eos>``, from an ``<eos>`` context."""
        targets = self.vocab.encode(text, add_eos=True)
        inputs = [self.vocab.eos_id] + targets[:-1]
        logp, _ = self.forward(torch.tensor(inputs).view(-1, 1), self.init_state(1))
        lp = logp[:, 0, :].gather(1, torch.tensor(targets, device=self.device).view(-1, 1)).view(-1).tolist()
        total = float(sum(lp))
        unknown = [w for w in text.split() if w not in self.vocab]
        return Score(self.vocab.decode(targets), lp, total, math.exp(-total / len(lp)), unknown)

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = False) -> list[str]:
        """Sample up to ``max_new_tokens`` words after ``prompt`` (greedy when temperature is 0)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        context = [self.vocab.eos_id] + self.vocab.encode(prompt)
        logp, state = self.forward(torch.tensor(context).view(-1, 1), self.init_state(1))
        out: list[int] = []
        for _ in range(max_new_tokens):
            nxt = sample_next(logp[-1, 0], temperature, top_k, top_p, generator)
            out.append(nxt)
            if stop_at_eos and nxt == self.vocab.eos_id:
                break
            logp, state = self.forward(torch.tensor([[nxt]]), state)
        return self.vocab.decode(out)
