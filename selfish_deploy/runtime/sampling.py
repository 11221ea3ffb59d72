"""Next-token sampling for a batch: each row with its own parameters and random generator.

``sample(logp (B, V), params, generators, seen) -> tokens (B,)`` works on whole tensors (sort, cumsum,
searchsorted); the only per-row work is drawing one uniform number from the row's own generator, so a
sequence's samples depend on its seed alone, not on which other sequences share the batch.

Filters, in vLLM's order: repetition penalty, temperature, top-k, top-p, then one draw (inverse CDF).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt (``max_tokens`` words at most)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches top_p
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (CTRL's rule)
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # stop before the first of these strings in the generated text
    stop_at_eos: bool = False  # stop after the sentence end <eos>
    logprobs: int = 0  # also return the n most likely tokens at every step
    stop_token_ids: tuple[int, ...] = field(default=())

    def __post_init__(self):
        checks = [(self.max_tokens >= 0, "max_tokens must be >= 0"),
                  (0.0 <= self.temperature, "temperature must be >= 0"),
                  (self.top_k >= 0, "top_k must be >= 0"),
                  (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (self.logprobs >= 0, "logprobs must be >= 0"),
                  (self.seed is None or 0 <= self.seed < 2**64, "seed must be in [0, 2**64)")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def make_generator(seed: int | None, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def filtered_logits(logp: torch.Tensor, params: Sequence[SamplingParams],
                    seen: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits after penalty, temperature, top-k and top-p, sorted descending per row, with the token id of
    each sorted position: (B, V) each; filtered tokens are -inf."""
    B, V = logp.shape
    dev = logp.device
    logits = logp.float()
    # which filters are on is decided from the parameters (host values), never from device tensors: no sync
    if seen is not None and any(p.repetition_penalty != 1.0 for p in params):
        pen = torch.tensor([p.repetition_penalty for p in params], device=dev).view(B, 1)
        # CTRL / HF: a seen token's logit is divided by the penalty when positive, multiplied when negative;
        # log-probabilities are never positive, so they are multiplied.
        logits = torch.where(seen & (pen != 1), torch.where(logits > 0, logits / pen, logits * pen), logits)
    temp = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev).view(B, 1)
    logits = logits / temp
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    rank = torch.arange(V, device=dev).view(1, V)
    k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], device=dev).view(B, 1)
    sorted_logits = sorted_logits.masked_fill(rank >= k, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = torch.tensor([p.top_p for p in params], device=dev).view(B, 1)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above
        sorted_logits = sorted_logits.masked_fill((before >= top_p) & (rank > 0), float("-inf"))
    return sorted_logits, order


def sample(logp: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator],
           seen: torch.Tensor | None = None) -> torch.Tensor:
    """One token id per row of ``logp`` (B, V); ``seen`` (B, V) bool marks tokens for the repetition penalty."""
    B = logp.shape[0]
    sorted_logits, order = filtered_logits(logp, params, seen)
    probs = torch.softmax(sorted_logits, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators]).to(logp.device)
    pos = torch.searchsorted(cdf, (u * cdf[:, -1]).view(B, 1)).clamp_(max=logp.shape[1] - 1)
    # never land on a filtered token (possible only through rounding at the end of the cdf)
    kept = (sorted_logits > float("-inf")).sum(dim=-1, keepdim=True)
    pos = torch.minimum(pos, kept - 1)
    tokens = order.gather(1, pos).view(B)
    if any(p.greedy for p in params):
        greedy = torch.tensor([p.greedy for p in params], device=logp.device)
        tokens = torch.where(greedy, order[:, 0], tokens)
    return tokens
