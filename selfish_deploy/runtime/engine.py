"""``SparseLM``: an export directory ready to score and generate, the engine behind the server and the CLI.

Knows nothing of HTTP or training. Three layers of API, each built on the one before:

- ``forward(tokens (T, B), state) -> (logprobs (T, B, V), state)``, on any backend;
- ``score_ids`` (a batch of token-id sequences, padded, in windows: each gets exactly the numbers it gets
  alone) and ``BatchGenerator`` (continuous batching, see generation.py);
- text: ``score``, ``score_texts``, ``generate``, ``stream``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import UserError
from ..exportdir import ExportedModel, load_export
from ..families import get_family
from ..hub.mixin import HubMixin
from . import heap
from .backends import make_backend
from .generation import BatchGenerator, Completion, TokenEvent
from .sampling import SamplingParams
from .state import State

MAX_WINDOW_COLUMNS = 4096  # tokens x sequences per kernel call when scoring: bounds the activations' memory
MAX_BATCH = 64  # sequences scored together


@dataclass
class Score:
    tokens: list[str]
    logprobs: list[float]
    log_likelihood: float
    perplexity: float
    unknown: list[str]


@dataclass
class TokenScores:
    """Log-probabilities of ``ids[1:]`` of one sequence, each given the ids before it; with ``top_logprobs``
    the most likely tokens at every position as (id, log-probability) pairs."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]] | None = None


class SparseLM(HubMixin):
    """An exported model on one backend: ``sparse`` (default), ``dense`` or ``onnx``."""

    def __init__(self, exported: ExportedModel, backend: str = "sparse", device: str | torch.device = "cpu",
                 threads: int | None = None):
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError("device cuda was asked for but CUDA is not available")
        if threads is not None:
            if threads < 1:
                raise UserError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)  # one pool: PyTorch's OpenMP runtime, shared with our kernels
        self.threads = threads or torch.get_num_threads()
        self.exported = exported
        self.config = exported.model_config
        self.vocab = exported.vocab
        self.backend = make_backend(backend, exported, self.device, self.threads)
        self.forward(torch.zeros((1, 1), dtype=torch.long))  # warm: kernels' batch-1 layout, first-call costs
        heap.return_freed()
        heap.keep_freed()  # calls reuse each other's freed activations instead of faulting fresh pages in

    @classmethod
    def load(cls, path: str | Path, backend: str = "sparse", device: str | torch.device = "cpu",
             threads: int | None = None) -> "SparseLM":
        return cls(load_export(path), backend, device, threads)

    def info(self) -> dict:
        c = self.config
        return {"arch": c.arch, "decoder": c.decoder, "layers": c.layers, "hidden": c.hidden, "emb": c.emb, "vocab_size": len(self.vocab),
                "tied": c.tie_weights, "density": float(self.exported.config.get("density", 1.0)),
                "backend": self.backend.name, "kernels": self.backend.kernels_name, "device": str(self.device),
                "threads": self.threads}

    # ---- tensors ---------------------------------------------------------------------------------------------

    def init_state(self, batch_size: int) -> State:
        return State(get_family(self.config.arch).init_state(self.config, batch_size, self.device))

    def check_ids(self, ids) -> None:
        V = len(self.vocab)
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < V]
        if bad:
            raise UserError(f"token ids must be integers in [0, {V}), got {bad[:5]}")

    def forward(self, tokens: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, State]:
        """Log-probabilities (T, B, V) of the next token after each of ``tokens`` (T, B), and the new state."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise UserError(f"tokens must be an integer tensor (T, B), got {tokens.dtype} {tuple(tokens.shape)}")
        ids = None
        if tokens.numel():  # a generation step's few ids are checked in Python: two tensor reductions cost more
            ids = tokens.reshape(-1).tolist() if tokens.numel() <= 256 else None
            lo, hi = (min(ids), max(ids)) if ids else (int(v) for v in torch.aminmax(tokens))
            if lo < 0 or hi >= len(self.vocab):
                raise UserError(f"token ids must be in [0, {len(self.vocab)})")
        if state is not None and ids is not None and len(ids) == 1:
            out = self.backend.step_token(ids[0], State.of(state))  # one step: ~25 µs of Python, not ~45
            if out is not None:
                return out
        with torch.inference_mode():
            state = self.init_state(tokens.shape[1]) if state is None else State.of(state)
            return self.backend.forward(tokens.long(), state)

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, State]:
        """``forward`` for a prompt: log-probabilities (B, V) after the last of ``tokens`` (T, B) only (the
        decoder runs once per sequence, not once per token), and the new state."""
        if tokens.dim() != 2 or tokens.shape[0] < 1:
            raise UserError(f"tokens must be an integer tensor (T >= 1, B), got {tuple(tokens.shape)}")
        self.check_ids(tokens.reshape(-1).tolist())
        state = self.init_state(tokens.shape[1]) if state is None else State.of(state)
        return self.backend.forward_last(tokens.long(), state)

    # ---- scoring ---------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score_ids(self, seqs: Sequence[Sequence[int]], top_logprobs: int = 0) -> list[TokenScores]:
        """Score every sequence (ids[1:] given what precedes), batched: sorted by length, padded at the end
        (the model is causal, so padding changes nothing before it), long ones in windows with the state
        carried over. Only the real positions reach the decoder."""
        seqs = [list(s) for s in seqs]
        for s in seqs:
            if not s:
                raise UserError("a sequence to score needs at least one token")
            self.check_ids(s)
        results: list[TokenScores | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        for start in range(0, len(order), MAX_BATCH):
            batch = order[start:start + MAX_BATCH]
            for i, r in zip(batch, self._score_batch([seqs[i] for i in batch], top_logprobs)):
                results[i] = r
        return results

    def _score_batch(self, seqs: list[list[int]], k: int) -> list[TokenScores]:
        B = len(seqs)
        lengths = [len(s) - 1 for s in seqs]  # predictions per sequence
        T = max(lengths)
        out = [TokenScores([], [] if k else None) for _ in seqs]
        if T == 0:
            return out
        inputs = torch.zeros(T, B, dtype=torch.long)
        targets = torch.zeros(T, B, dtype=torch.long)
        for b, s in enumerate(seqs):
            inputs[:lengths[b], b] = torch.tensor(s[:-1])
            targets[:lengths[b], b] = torch.tensor(s[1:])
        valid = torch.arange(T).view(T, 1) < torch.tensor(lengths).view(1, B)  # (T, B)
        window = max(1, MAX_WINDOW_COLUMNS // B)
        state = self.init_state(B)
        for t0 in range(0, T, window):
            tok, tg, ok = inputs[t0:t0 + window], targets[t0:t0 + window], valid[t0:t0 + window]
            columns = ok.reshape(-1).nonzero().view(-1)  # flat n = t * B + b of the real positions
            rows = (columns % B).tolist()
            if k <= 1:
                res, state = self.backend.score(tok, tg, state, top1=k == 1, columns=columns)
                lps = res["target_lp"].tolist()
                if k:
                    tops = list(zip(res["argmax"].tolist(), res["max_lp"].tolist()))
            else:
                logp, state = self.backend.forward(tok, state)
                flat = logp.reshape(-1, logp.shape[-1])[columns.to(logp.device)]
                lps = flat.gather(1, tg.reshape(-1)[columns].view(-1, 1).to(flat.device)).view(-1).tolist()
                vals, idx = torch.topk(flat, min(k, flat.shape[1]), dim=1)
                tops = [list(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
            for j, b in enumerate(rows):  # time-major: each sequence's positions come in order
                out[b].logprobs.append(lps[j])
                if k:
                    out[b].top.append([tops[j]] if k == 1 else tops[j])
        return out

    def score_texts(self, texts: Sequence[str]) -> list[Score]:
        """Each text scored from an ``<eos>`` context: every word and each line's closing ``<eos>``."""
        targets = [self.vocab.encode(t, add_eos=True) for t in texts]
        for t, ids in zip(texts, targets):
            if not ids:
                raise UserError(f"nothing to score in {t!r}")
        scored = self.score_ids([[self.vocab.eos_id] + ids for ids in targets])
        out = []
        for text, ids, s in zip(texts, targets, scored):
            total = float(sum(s.logprobs))
            unknown = [w for w in text.split() if w not in self.vocab]
            out.append(Score(self.vocab.decode(ids), s.logprobs, total, math.exp(-total / len(ids)), unknown))
        return out

    def score(self, text: str) -> Score:
        return self.score_texts([text])[0]

    # ---- generation ------------------------------------------------------------------------------------------

    def prompt_ids(self, prompt: str) -> list[int]:
        """A text prompt starts after a sentence end, as scoring does."""
        return [self.vocab.eos_id] + self.vocab.encode(prompt)

    def batch_generator(self) -> BatchGenerator:
        return BatchGenerator(self)

    @staticmethod
    def _params(params: SamplingParams | None, overrides: dict) -> SamplingParams:
        if params is None:
            return SamplingParams(**overrides)
        if overrides:
            return replace(params, **overrides)
        return params

    @torch.inference_mode()
    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
               **overrides) -> Iterator[TokenEvent]:
        """The tokens of one continuation as they come (a text prompt, or token ids taken as given)."""
        gen = self.batch_generator()
        ids = self.prompt_ids(prompt) if isinstance(prompt, str) else list(prompt)
        seq = gen.add(ids, self._params(params, overrides))
        while not seq.finished:
            yield from gen.step()

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, **overrides) -> Completion:
        """One continuation: ``generate("the company", max_tokens=20, temperature=0.8, seed=1)``."""
        return self.generate_batch([prompt], [self._params(params, overrides)])[0]

    @torch.inference_mode()
    def generate_batch(self, prompts: Sequence[str | Sequence[int]],
                       params: Sequence[SamplingParams]) -> list[Completion]:
        """Several continuations advanced together (each exactly as it would be alone)."""
        if len(prompts) != len(params):
            raise UserError(f"{len(prompts)} prompts but {len(params)} sampling parameters")
        gen = self.batch_generator()
        seqs = gen.add_many([self.prompt_ids(p) if isinstance(p, str) else list(p) for p in prompts], list(params))
        while gen:
            gen.step()
        return [s.completion() for s in seqs]
