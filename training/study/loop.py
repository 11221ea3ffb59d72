"""Training and evaluation of a masked classifier: epochs over encoded Reber data, accuracy on a split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfish_deploy.errors import UserError
from selfish_deploy.masks import MaskRegistry

from .classifier import Classifier
from .reber import ReberData, encode, generate, split

POOL = 20  # batches per length-sorted pool (see ``batches``)


@dataclass(frozen=True)
class Encoded:
    tokens: torch.Tensor  # (T_max, N), right-padded
    lengths: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)

    @classmethod
    def of(cls, data: ReberData, device: torch.device) -> "Encoded":
        tokens, lengths = encode(data.strings)
        return cls(tokens.to(device), lengths, torch.tensor(data.labels, device=device))

    def __len__(self) -> int:
        return self.lengths.numel()

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = self.lengths[idx]
        cols = torch.as_tensor(idx, device=self.tokens.device)
        return self.tokens[: int(lengths.max()), cols], lengths, self.labels[cols]  # (T, B), (B,), (B,)


@dataclass(frozen=True)
class StudyData:
    train: Encoded
    test: Encoded
    device: torch.device

    @classmethod
    def load(cls, cfg, device: torch.device) -> "StudyData":
        """Generate, split and encode the Reber strings of a study config (same seed -> same strings)."""
        train, test = split(generate(cfg.strings, cfg.min_len, cfg.max_len, cfg.seed), cfg.test_fraction)
        return cls(Encoded.of(train, device), Encoded.of(test, device), device)


def torch_seed(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (ints and strings): one independent stream per model and purpose."""
    words = [p if isinstance(p, int) else int.from_bytes(hashlib.sha256(str(p).encode()).digest()[:8], "little")
             for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def batches(n: int, batch_size: int, rng: np.random.Generator | None, lengths: torch.Tensor) -> list[np.ndarray]:
    """Index batches. Training (``rng``): shuffle, sort each pool of ``POOL`` batches by length, shuffle the
    batches -- random batches with little padding (lengths are uniform, so padding would double the cost).
    Evaluation (no ``rng``): sorted by length."""
    if rng is None:
        order = np.argsort(lengths.numpy(), kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    order = rng.permutation(n)
    lens = lengths.numpy()
    pool = batch_size * POOL
    out = []
    for p in range(0, n, pool):
        chunk = order[p:p + pool]
        chunk = chunk[np.argsort(lens[chunk], kind="stable")]
        out += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [out[i] for i in rng.permutation(len(out))]


def train_epoch(model: Classifier, masks: MaskRegistry, optimizer: torch.optim.Optimizer, data: Encoded,
                batch_size: int, clip: float, rng: np.random.Generator, max_batches: int | None = None,
                desc: str = "train") -> float:
    """One epoch; masked weights stay exactly zero (gradients masked before, weights after each step).
    Returns the mean training loss."""
    model.train()
    todo = batches(len(data), batch_size, rng, data.lengths)[:max_batches]
    total = 0.0
    for idx in tqdm(todo, desc=desc, unit="batch", leave=False, disable=None):
        tokens, lengths, labels = data.batch(idx)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens, lengths), labels)
        loss.backward()
        masks.mask_grads_()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        masks.apply_()
        total += loss.item()
    if not np.isfinite(total):
        raise UserError("training diverged (non-finite loss); try a smaller --lr")
    return total / max(1, len(todo))


@torch.no_grad()
def accuracy(model: Classifier, data: Encoded, batch_size: int = 256, max_batches: int | None = None) -> float:
    """Fraction of strings classified correctly."""
    model.eval()
    correct = total = 0
    for idx in batches(len(data), batch_size, None, data.lengths)[:max_batches]:
        tokens, lengths, labels = data.batch(idx)
        correct += int((model(tokens, lengths).argmax(-1) == labels).sum())
        total += len(idx)
    return correct / total


def adam(model: Classifier, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=lr)
