"""Seeded Reber-grammar data set: valid strings from the 7-state automaton, invalid ones rejected by it.

The automaton (Reber 1967; state 0 emits ``B``, state 6 emits ``E`` and accepts)::

    0 -B-> 1    1 -T-> 2   1 -P-> 3    2 -S-> 2   2 -X-> 4    3 -T-> 3   3 -V-> 5
                4 -X-> 3   4 -S-> 6    5 -P-> 4   5 -V-> 6    6 -E-> accept

Lengths: each string's length is drawn uniformly from ``[min_len, max_len]`` and, for valid strings, the string
uniformly among all valid strings of that length (path counting over the automaton), so long strings are as common
as short ones. Invalid strings have exactly the same length distribution, so length is no cue. Half of them are a
valid string with one inner letter substituted by another letter of A-Z ("substitution": with a Reber letter, only the automaton
state tells them apart), half are uniform paths of the same length through an *alien* automaton: the Reber topology
with its inner transition letters redrawn from A-Z, half of the alien automata using only Reber letters (as in the
thesis data, where invalid strings come from other automata). All strings start with B and end with E. Every invalid string is checked against the automaton and redrawn
if accepted. Labels are balanced exactly: ``n // 2`` valid strings and ``n - n // 2`` invalid ones.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from selfish_deploy.errors import UserError

# (state, letter) -> next state; 6 --E--> ACCEPT.
ACCEPT = 7
TRANSITIONS: dict[int, tuple[tuple[str, int], ...]] = {
    0: (("B", 1),),
    1: (("T", 2), ("P", 3)),
    2: (("S", 2), ("X", 4)),
    3: (("T", 3), ("V", 5)),
    4: (("X", 3), ("S", 6)),
    5: (("P", 4), ("V", 6)),
    6: (("E", ACCEPT),),
}
REBER_LETTERS = "BTPSXVE"
ALPHABET = string.ascii_uppercase  # token id = 1 + index; 0 is padding
PAD = 0
VOCAB_SIZE = 1 + len(ALPHABET)
MIN_REBER_LEN = 5  # BTXSE
N_ALIEN = 8  # alien automata per data set


def accepts(s: str) -> bool:
    """Whether the Reber automaton accepts ``s``."""
    state = 0
    for ch in s:
        nxt = dict(TRANSITIONS.get(state, ())).get(ch)
        if nxt is None:
            return False
        state = nxt
    return state == ACCEPT


@lru_cache(maxsize=None)
def completions(state: int, remaining: int) -> int:
    """Number of letter sequences of exactly ``remaining`` letters leading from ``state`` to acceptance."""
    if state == ACCEPT:
        return int(remaining == 0)
    if remaining == 0:
        return 0
    return sum(completions(nxt, remaining - 1) for _, nxt in TRANSITIONS[state])


@lru_cache(maxsize=None)
def first_option_probability(state: int, remaining: int) -> float:
    """P(take the state's first transition) for a uniform path with ``remaining`` letters left."""
    counts = [completions(nxt, remaining - 1) for _, nxt in TRANSITIONS[state]]
    return counts[0] / sum(counts)


def uniform_path(length: int, rng: np.random.Generator, labels: dict | None = None) -> str:
    """A uniformly random accepted path of ``length`` letters; ``labels`` relabels (state, index) -> letter."""
    out, state = [], 0
    for remaining in range(length, 0, -1):
        options = TRANSITIONS[state]
        i = 0 if len(options) == 1 else int(rng.random() >= first_option_probability(state, remaining))
        out.append(labels[(state, i)] if labels else options[i][0])
        state = options[i][1]
    return "".join(out)


def alien_automaton(rng: np.random.Generator, reber_letters_only: bool) -> dict:
    """Letters for the inner transitions of the Reber topology, redrawn (distinct within a state); B and E stay."""
    pool = "TPSXV" if reber_letters_only else ALPHABET.replace("B", "").replace("E", "")
    labels = {(0, 0): "B", (6, 0): "E"}
    for state in range(1, 6):
        for i, p in enumerate(rng.permutation(len(pool))[:2]):
            labels[(state, i)] = pool[p]
    return labels


def substitute(s: str, rng: np.random.Generator) -> str:
    """Replace one inner letter (B and E stay, so the frame is never the cue) by another of A-Z."""
    pos = int(rng.integers(1, len(s) - 1))
    others = [c for c in ALPHABET if c != s[pos]]
    return s[:pos] + others[int(rng.integers(len(others)))] + s[pos + 1:]


@dataclass(frozen=True)
class ReberData:
    strings: tuple[str, ...]
    labels: tuple[int, ...]  # 1 = valid


def generate(n: int, min_len: int, max_len: int, seed: int) -> ReberData:
    """``n`` shuffled strings, exactly half valid (see the module docstring for the distributions)."""
    if n < 2:
        raise UserError(f"need at least 2 strings, got {n}")
    if not MIN_REBER_LEN <= min_len <= max_len:
        raise UserError(f"string lengths must satisfy {MIN_REBER_LEN} <= min_len <= max_len, "
                        f"got {min_len}..{max_len}")
    rng = np.random.default_rng(seed)
    aliens = [alien_automaton(rng, reber_letters_only=(i % 2 == 0)) for i in range(N_ALIEN)]
    n_valid = n // 2
    items = []
    for k in range(n):
        length = int(rng.integers(min_len, max_len + 1))
        if k < n_valid:
            items.append((uniform_path(length, rng), 1))
            continue
        while True:  # redraw until the automaton rejects it
            if rng.random() < 0.5:
                s = substitute(uniform_path(length, rng), rng)
            else:
                s = uniform_path(length, rng, aliens[int(rng.integers(N_ALIEN))])
            if not accepts(s):
                break
        items.append((s, 0))
    order = rng.permutation(n)
    return ReberData(tuple(items[i][0] for i in order), tuple(items[i][1] for i in order))


def split(data: ReberData, test_fraction: float) -> tuple[ReberData, ReberData]:
    """First ``1 - test_fraction`` for training, the rest for testing (the data are already shuffled)."""
    n_test = round(len(data.strings) * test_fraction)
    if not 0 < n_test < len(data.strings):
        raise UserError(f"test fraction {test_fraction} leaves an empty split of {len(data.strings)} strings")
    cut = len(data.strings) - n_test
    return (ReberData(data.strings[:cut], data.labels[:cut]), ReberData(data.strings[cut:], data.labels[cut:]))


def encode(strings: list[str] | tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (T, B) right-padded with ``PAD`` and lengths (B,)::

        B T X S E .      column b = one string, rows = time; padding after the last real step,
        B P V V E .      so a causal RNN's output at ``lengths[b] - 1`` never sees padding
    """
    lengths = torch.tensor([len(s) for s in strings])
    tokens = torch.full((int(lengths.max()), len(strings)), PAD, dtype=torch.long)
    for b, s in enumerate(strings):
        tokens[: len(s), b] = torch.tensor([1 + ALPHABET.index(c) for c in s])
    return tokens, lengths
