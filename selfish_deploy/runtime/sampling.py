"""Next-token sampling for a batch: each row with its own parameters and random generator.

``sample(logp (B, V), params, generators, seen) -> tokens (B,)`` works on whole tensors (sort, cumsum,
searchsorted); the only per-row work is drawing one uniform number from the row's own generator, so a
sequence's samples depend on its seed alone, not on which other sequences share the batch.

Filters, in vLLM's order: logit bias, repetition penalty (prompt and output tokens), frequency and presence
penalties (output tokens), temperature, min-p, top-k, top-p, then one draw (inverse CDF). ``min_tokens`` is
the batch generator's: it bans the stop tokens until then. The log-probabilities reported for the chosen
tokens are the model's own, before any filter (vLLM's default ``raw_logprobs``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from ..errors import UserError


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt (``max_tokens`` words at most)."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose probability reaches top_p
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one (vLLM's)
    min_tokens: int = 0  # no <eos> (with stop_at_eos) or stop_token_ids before this many tokens (vLLM's)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (CTRL's rule)
    presence_penalty: float = 0.0  # subtracted from the logit of every token already generated (OpenAI's)
    frequency_penalty: float = 0.0  # subtracted once per time a token was generated (OpenAI's)
    seed: int | None = None  # None: a fresh random seed
    stop: tuple[str, ...] = ()  # stop before the first of these strings in the generated text
    stop_at_eos: bool = False  # stop after the sentence end <eos>
    logprobs: int = 0  # also return the n most likely tokens at every step
    stop_token_ids: tuple[int, ...] = field(default=())
    # added to a token's logit before everything else ({id: bias} or (id, bias) pairs; OpenAI's -100..100)
    logit_bias: tuple[tuple[int, float], ...] | Mapping[int, float] = field(default=())

    def __post_init__(self):
        checks = [(self.max_tokens >= 0, "max_tokens must be >= 0"),
                  (0.0 <= self.temperature, "temperature must be >= 0"),
                  (self.top_k >= 0, "top_k must be >= 0"),
                  (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
                  (0.0 <= self.min_p <= 1.0, "min_p must be in [0, 1]"),
                  (0 <= self.min_tokens <= self.max_tokens, "min_tokens must be in [0, max_tokens]"),
                  (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
                  (-2.0 <= self.presence_penalty <= 2.0, "presence_penalty must be in [-2, 2]"),
                  (-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty must be in [-2, 2]"),
                  (self.logprobs >= 0, "logprobs must be >= 0"),
                  (self.seed is None or 0 <= self.seed < 2**64, "seed must be in [0, 2**64)")]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        bias = dict(self.logit_bias.items() if isinstance(self.logit_bias, Mapping) else self.logit_bias)
        for tok, b in bias.items():
            if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0:
                raise UserError(f"logit_bias keys must be token ids (integers >= 0), got {tok!r}")
            if not (isinstance(b, (int, float)) and math.isfinite(b) and -100 <= b <= 100):
                raise UserError(f"logit_bias values must be numbers in [-100, 100], got {b!r} for token {tok}")
        object.__setattr__(self, "logit_bias", tuple(sorted((t, float(b)) for t, b in bias.items())))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def counts_output(self) -> bool:
        """Whether sampling needs this sequence's output-token counts (presence or frequency penalty)."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def make_generator(seed: int | None, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def penalized(logp: torch.Tensor, params: Sequence[SamplingParams], seen: torch.Tensor | None,
              counts: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities as float logits: each row's logit bias added, then seen tokens penalised (CTRL / HF:
    a logit is divided by the penalty when positive, multiplied when negative), then ``frequency_penalty *
    count + presence_penalty * (count > 0)`` subtracted (``counts`` (B, V): output tokens so far).
    ``logp`` is not modified."""
    logits = logp.float()
    # which filters are on is decided from the parameters (host values), never from device tensors: no sync
    biased = [(r, t, b) for r, p in enumerate(params) for t, b in p.logit_bias]
    if biased:
        rows, cols, vals = zip(*biased)
        at = (torch.tensor(rows, device=logp.device), torch.tensor(cols, device=logp.device))
        logits = logits.index_put(at, torch.tensor(vals, dtype=logits.dtype, device=logp.device), accumulate=True)
    if seen is not None and any(p.repetition_penalty != 1.0 for p in params):
        pen = torch.tensor([p.repetition_penalty for p in params], device=logp.device).view(-1, 1)
        logits = torch.where(seen & (pen != 1), torch.where(logits > 0, logits / pen, logits * pen), logits)
    if counts is not None and any(p.counts_output for p in params):
        freq = torch.tensor([p.frequency_penalty for p in params], device=logp.device).view(-1, 1)
        pres = torch.tensor([p.presence_penalty for p in params], device=logp.device).view(-1, 1)
        logits = logits - (freq * counts + pres * (counts > 0))
    return logits


def filtered_logits(logp: torch.Tensor, params: Sequence[SamplingParams], seen: torch.Tensor | None = None,
                    counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference filter (a full sort; tests compare ``sample`` with it): logits after the bias and the
    penalties, temperature, min-p, top-k and top-p, sorted descending per row, with the token id of each sorted
    position; filtered: -inf."""
    B, V = logp.shape
    dev = logp.device
    logits = penalized(logp, params, seen, counts)
    temp = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], device=dev).view(B, 1)
    logits = _min_p(logits / temp, params)
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


def _min_p(x: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Rows' logits ``x`` (after temperature) with every token below ``min_p`` times the row's most likely
    one's probability at -inf (exp(x - max) < min_p, the softmax's own ratio)."""
    if not any(p.min_p > 0 for p in params):
        return x
    min_p = torch.tensor([p.min_p for p in params], device=x.device).view(-1, 1)
    return x.masked_fill(torch.exp(x - x.max(dim=-1, keepdim=True).values) < min_p, float("-inf"))


def _uniforms(generators: Sequence[torch.Generator], device) -> torch.Tensor:
    return torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators]).to(device)


def _draw(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: per row the first position whose cumulative weight exceeds u * total (u in [0, 1)), so
    never a zero-weight position."""
    cdf = torch.cumsum(weights, dim=-1)
    pos = torch.searchsorted(cdf, (u * cdf[:, -1]).view(-1, 1), right=True)
    over = pos >= weights.shape[1]  # u * total rounded up to total: take the last token with weight
    if bool(over.any()):
        last = weights.shape[1] - 1 - torch.argmax((weights.flip(-1) > 0).int(), dim=-1, keepdim=True)
        pos = torch.where(over, last, pos)
    return pos


def _candidates(x: torch.Tensor, params: Sequence[SamplingParams]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with top-k and/or top-p: the kept tokens' weights (proportional to their probabilities) and ids,
    most likely first, from ``torch.topk`` (a full sort is ~25x slower on CPU). A top-p row without top-k
    starts from the 64 most likely tokens and widens (x4) until they hold top_p of the probability."""
    B, V = x.shape
    dev = x.device
    k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], device=dev).view(B, 1)
    top_p = torch.tensor([p.top_p for p in params], device=dev).view(B, 1)
    lse_all = torch.logsumexp(x, dim=-1, keepdim=True)
    width = min(V, max([64] + [p.top_k for p in params if 0 < p.top_k < V]))
    need = [p.top_k if 0 < p.top_k < V else 0 for p in params]  # top-k rows: exactly k; top-p rows: grow
    while True:
        vals, ids = torch.topk(x, width, dim=-1)  # sorted, most likely first
        rank = torch.arange(width, device=dev).view(1, width)
        in_k = rank < k
        lse = torch.where(k < V, torch.logsumexp(vals.masked_fill(~in_k, float("-inf")), -1, keepdim=True), lse_all)
        probs = torch.exp(vals - lse).masked_fill(~in_k, 0.0)  # renormalised over the top-k (HF's order)
        short = [i for i, p in enumerate(params) if need[i] == 0 and p.top_p < 1.0]
        if width == V or not short:
            break
        mass = probs.sum(dim=-1).tolist()
        if all(mass[i] >= params[i].top_p for i in short):
            break
        width = min(V, width * 4)
    before = torch.cumsum(probs, dim=-1) - probs
    keep = in_k & ((before < top_p) | (rank == 0))
    return probs * keep, ids


def sample(logp: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator],
           seen: torch.Tensor | None = None, counts: torch.Tensor | None = None) -> torch.Tensor:
    """One token id per row of ``logp`` (B, V); ``seen`` (B, V) bool marks tokens for the repetition penalty,
    ``counts`` (B, V) the output tokens so far for the presence and frequency penalties.

    Rows go in three groups by their own parameters (greedy; plain sampling over the whole vocabulary; top-k
    and/or top-p over candidates), so a row's token never depends on the other rows of the batch."""
    B, V = logp.shape
    dev = logp.device
    logits = penalized(logp, params, seen, counts)
    tokens = torch.empty(B, dtype=torch.long, device=dev)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    plain = [i for i, p in enumerate(params) if not p.greedy and not 0 < p.top_k < V and p.top_p >= 1.0]
    filtered = [i for i, p in enumerate(params) if not p.greedy and i not in set(plain)]
    for rows, kind in ((greedy, "greedy"), (plain, "plain"), (filtered, "filtered")):
        if not rows:
            continue
        idx = torch.tensor(rows, device=dev)
        x = logits.index_select(0, idx)
        if kind == "greedy":
            tokens[idx] = x.argmax(dim=-1)
            continue
        group = [params[i] for i in rows]
        x = _min_p(x / torch.tensor([p.temperature for p in group], device=dev).view(-1, 1), group)
        u = _uniforms([generators[i] for i in rows], dev)
        if kind == "plain":
            tokens[idx] = _draw(torch.softmax(x, dim=-1), u).view(-1)
        else:
            weights, ids = _candidates(x, group)
            tokens[idx] = ids.gather(1, _draw(weights, u)).view(-1)
    return tokens
