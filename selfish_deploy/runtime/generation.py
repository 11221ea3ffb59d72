"""Continuous batching: sequences join, advance one token per ``step()`` together, and leave when done.

    gen = BatchGenerator(lm)
    a = gen.add(prompt_ids, SamplingParams(max_tokens=20, seed=1))   # prefilled now, joins the next step
    while gen:                                                       # one batched forward per step
        for event in gen.step():                                     # a TokenEvent per active sequence
            ...
    a.completion()                                                   # ids, words, text, finish reason

Each sequence keeps its own sampling parameters, generator and row of the batched ``State``; its tokens do
not depend on the other sequences in the batch (see sampling.py and the kernels' canonical sum order).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from ..errors import UserError
from ..vocab import EOS
from .sampling import SamplingParams, make_generator, sample
from .state import State


def piece(text: str, word: str) -> str:
    """What ``word`` adds to the detokenized ``text``: a space before it unless at a line start, ``<eos>`` a
    line break."""
    if word == EOS:
        return "\n"
    return word if not text or text[-1] == "\n" else " " + word


def detokenize(words: list[str]) -> str:
    """Words joined by spaces, ``<eos>`` as a line break."""
    text = ""
    for w in words:
        text += piece(text, w)
    return text


@dataclass
class TokenEvent:
    """One generated token of one sequence; ``text`` is the new text that is safe to show (held back while it
    could still be the start of a stop string)."""

    seq_id: int
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, float]] | None
    text: str
    finished: bool
    finish_reason: str | None


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    tokens: list[str]
    text: str
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None
    finish_reason: str | None


@dataclass
class Sequence:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    seen: torch.Tensor | None = None  # (V,) bool, for the repetition penalty
    counts: torch.Tensor | None = None  # (V,) output tokens so far, for the presence and frequency penalties
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    full: str = ""  # every word detokenized (grows by one piece per token: no quadratic re-join)
    text: str = ""  # what the completion returns: ``full`` cut before a stop string
    emitted: int = 0  # characters of text already handed out in events
    finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def completion(self) -> Completion:
        return Completion(self.prompt_ids, self.token_ids, self.words, self.text, self.logprobs,
                          self.top if self.params.logprobs else None, self.finish_reason)


class BatchGenerator:
    """The active sequences of one engine, their batched state and their next-token log-probabilities."""

    def __init__(self, lm):
        self.lm = lm
        self.seqs: list[Sequence] = []
        self.state: State | None = None
        self.logp: torch.Tensor | None = None  # (B, V): the distribution each active sequence samples next
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        """Prefill ``prompt_ids`` (taken exactly as given) and join the batch at the next step."""
        return self.add_many([prompt_ids], [params])[0]

    def add_many(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Sequence]:
        """Prefill several prompts together and join them all at the next step (each gets exactly what ``add``
        alone gives it). Longest first, padded at the end, in segments between distinct lengths: a prompt
        leaves the batch where it ends, with its state and its last position's distribution."""
        lm = self.lm
        if len(prompts) != len(params):
            raise UserError(f"{len(prompts)} prompts but {len(params)} sampling parameters")
        for ids in prompts:
            if not ids:
                raise UserError("a prompt needs at least one token (a text prompt starts with <eos>)")
            lm.check_ids(ids)
        for p in params:
            if p.logit_bias and p.logit_bias[-1][0] >= len(lm.vocab):  # sorted by id: the last is the largest
                raise UserError(f"logit_bias token ids must be in [0, {len(lm.vocab)}), got {p.logit_bias[-1][0]}")
        seqs = [Sequence(next(self._ids), list(ids), p, make_generator(p.seed)) for ids, p in zip(prompts, params)]
        todo = []
        for seq in seqs:
            if seq.params.max_tokens == 0:
                seq.finish_reason = "length"
                continue
            if seq.params.repetition_penalty != 1.0:
                seq.seen = torch.zeros(len(lm.vocab), dtype=torch.bool)
                seq.seen[torch.tensor(seq.prompt_ids)] = True
            if seq.params.counts_output:
                seq.counts = torch.zeros(len(lm.vocab))
            todo.append(seq)
        if not todo:
            return seqs
        order = sorted(todo, key=lambda s: -len(s.prompt_ids))
        lens = [len(s.prompt_ids) for s in order]
        tokens = torch.zeros(lens[0], len(order), dtype=torch.long)
        for b, s in enumerate(order):
            tokens[:lens[b], b] = torch.tensor(s.prompt_ids)
        done: dict[int, tuple[State, torch.Tensor]] = {}
        state, n, t = lm.init_state(len(order)), len(order), 0
        for end in sorted(set(lens)):
            logp, state = lm.prefill(tokens[t:end, :n], state)  # (n, V)
            left = sum(1 for L in lens[:n] if L > end)  # longest first: the ones ending here are the last
            for b in range(left, n):
                done[order[b].id] = (state.select([b]), logp[b:b + 1].float())
            state, n, t = (state.select(list(range(left))) if left else None), left, end
        for seq in todo:  # join in the order given
            s_state, s_logp = done[seq.id]
            self.seqs.append(seq)
            self.state = s_state if self.state is None else State.cat([self.state, s_state])
            self.logp = s_logp if self.logp is None else torch.cat([self.logp, s_logp.to(self.logp.device)], 0)
        return seqs

    def cancel(self, seq: Sequence, reason: str = "abort") -> None:
        """Drop ``seq`` from the batch (a client went away)."""
        if seq in self.seqs:
            keep = [i for i, s in enumerate(self.seqs) if s is not seq]
            self._keep(keep)
        seq.finish_reason = seq.finish_reason or reason

    def _keep(self, rows: list[int]) -> None:
        self.seqs = [self.seqs[i] for i in rows]
        if rows:
            self.state = self.state.select(rows)
            self.logp = self.logp[torch.tensor(rows, device=self.logp.device)]
        else:
            self.state, self.logp = None, None

    def step(self) -> list[TokenEvent]:
        """Sample one token for every active sequence, then advance the ones that go on in one forward."""
        if not self.seqs:
            return []
        params = [s.params for s in self.seqs]
        seen, counts = self._rows("seen", torch.bool), self._rows("counts", torch.float32)
        logp = self.logp
        eos = self.lm.vocab.eos_id
        bans = [(r, t) for r, s in enumerate(self.seqs) if len(s.token_ids) < s.params.min_tokens
                for t in ((eos,) if s.params.stop_at_eos else ()) + s.params.stop_token_ids]
        if bans:  # min_tokens: no stop token yet (the log-probabilities reported stay the model's)
            rows, cols = zip(*bans)
            at = (torch.tensor(rows, device=logp.device), torch.tensor(cols, device=logp.device))
            logp = logp.index_put(at, torch.tensor(float("-inf"), device=logp.device))
        tokens = sample(logp, params, [s.generator for s in self.seqs], seen, counts)
        chosen = self.logp.gather(1, tokens.view(-1, 1)).view(-1).tolist()
        k = max(p.logprobs for p in params)
        tops = None
        if k:
            vals, idx = torch.topk(self.logp, min(k, self.logp.shape[1]), dim=1)
            tops = (idx.tolist(), vals.tolist())
        events = []
        for row, (seq, tok) in enumerate(zip(self.seqs, tokens.tolist())):
            top = None
            if seq.params.logprobs:
                n = seq.params.logprobs
                top = list(zip(tops[0][row][:n], tops[1][row][:n]))
                seq.top.append(top)
            events.append(self._advance(seq, tok, chosen[row], top))
        keep = [i for i, s in enumerate(self.seqs) if not s.finished]
        if len(keep) != len(self.seqs):
            tokens = tokens[torch.tensor(keep, dtype=torch.long)] if keep else tokens[:0]
            self._keep(keep)
        if self.seqs:
            logp, self.state = self.lm.forward(tokens.view(1, -1).cpu(), self.state)
            self.logp = logp[0].float()
        return events

    def _rows(self, name: str, dtype: torch.dtype) -> torch.Tensor | None:
        """The sequences' (V,) ``name`` tensors (``seen``, ``counts``) as one (B, V) batch, zeros for those
        without one; None when none has one."""
        if all(getattr(s, name) is None for s in self.seqs):
            return None
        V = self.logp.shape[1]
        return torch.stack([t if (t := getattr(s, name)) is not None else torch.zeros(V, dtype=dtype)
                            for s in self.seqs]).to(self.logp.device)

    def _advance(self, seq: Sequence, tok: int, lp: float, top) -> TokenEvent:
        p = seq.params
        word = self.lm.vocab.itos[tok]
        seq.token_ids.append(tok)
        seq.logprobs.append(lp)
        seq.words.append(word)
        if seq.seen is not None:
            seq.seen[tok] = True
        if seq.counts is not None:
            seq.counts[tok] += 1
        before = len(seq.full)
        seq.full += piece(seq.full, word)
        full = seq.full
        reason, text = None, full
        # a stop string can only end inside the new piece: search from just before it
        hits = [i for i in (full.find(s, max(0, before - len(s) + 1)) for s in p.stop) if i >= 0]
        if hits:
            reason, text = "stop", full[:min(hits)]
        elif (p.stop_at_eos and word == EOS) or tok in p.stop_token_ids:
            reason = "stop"
        elif len(seq.token_ids) >= p.max_tokens:
            reason = "length"
        safe = len(text)
        if reason is None:  # hold back a tail that may still become a stop string
            for s in p.stop:
                for n in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:n]):
                        safe = min(safe, len(text) - n)
                        break
        seq.text = text
        delta, seq.emitted = text[seq.emitted:safe], max(seq.emitted, safe)
        seq.finish_reason = reason
        return TokenEvent(seq.id, tok, word, lp, top, delta, reason is not None, reason)
