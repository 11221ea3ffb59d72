"""AWD-LSTM's training-loop regularizers: AR, TAR and variable-length BPTT with the learning rate rescaled.

As ``salesforce/awd-lstm-lm`` ``main.py`` ``train()`` (the same loop in ``Shiweiliuiiiiiii/Selfish-RNN``
``ONLSTM/main_ONLSTM.py``)::

    base    = bptt if random() < 0.95 else bptt / 2          (numpy's global RNG, seeded with --seed)
    seq_len = max(5, int(normal(base, 5)))                   (uncapped: their "min(seq_len, bptt + 10)" is
                                                              commented out; zihangdai/mos caps at
                                                              bptt + max_seq_len_delta)
    lr      = lr * seq_len / bptt   for this one step, then restored
    loss    = raw_loss + alpha * dropped_last.pow(2).mean()                 (AR)
                       + beta * (raw_last[1:] - raw_last[:-1]).pow(2).mean()  (TAR)

The windows start at 0 and follow each other (``i += seq_len``) while ``i < rows - 2``; ``get_batch`` clips the
last one to the rows left, but the learning rate is scaled by the drawn ``seq_len``, as theirs.

A trunk that supports AR/TAR sets ``ar_input`` (what AR squares: AWD-LSTM's dropped last-layer output, ON-LSTM's
raw one, as each authors' code) and ``tar_input`` (what TAR differences), both (T, B, W), in every
training-mode forward (see ``selfish_deploy.families.awd_lstm``). The loop takes alpha, beta and variable BPTT
from the family's options (``loop_options``); families without them train exactly as before.

Steps per epoch vary with the windows; the sparse-training methods keep the nominal count (rows / bptt) for
their schedules, as Selfish-RNN's ``CosineDecay(death_rate, epochs * len(train_data) // bptt)`` does. The
windows average a little under bptt (67.7 for 70), so a run takes ~3% more steps than that, and the
per-epoch topology updates, which our methods allow only before the nominal last step, stop in about the last
3% of the epochs (theirs update every epoch, by then at a death rate near its final value).

The learning-rate rescale applies to the step it was drawn for in both SNT-ASGD phases (our averaged phase
steps with ``param_groups``' lr). In the authors' averaged phase it does not quite: ``torch.optim.ASGD``
(awd-lstm-lm) steps with an ``eta`` computed from the previous step's lr, and ``Sparse_ASGD`` keeps, for the
masked tensors, the ``eta`` of its first step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from selfish_deploy.errors import UserError


def activation_regularization(dropped: torch.Tensor, alpha: float) -> torch.Tensor:
    """AR: ``alpha`` times the mean squared (dropped) last-layer activation."""
    return alpha * dropped.pow(2).mean()


def temporal_activation_regularization(raw: torch.Tensor, beta: float) -> torch.Tensor:
    """TAR ("slowness"): ``beta`` times the mean squared step-to-step change of the raw last-layer output
    (T, B, W); 0 for a one-step window (theirs never has one: its windows keep at least two rows)."""
    if raw.size(0) < 2:
        return raw.new_zeros(())
    return beta * (raw[1:] - raw[:-1]).pow(2).mean()


def last_activations(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ar_input, tar_input)`` of the one submodule of ``model`` that set them in its last forward."""
    for m in model.modules():
        ar, tar = getattr(m, "ar_input", None), getattr(m, "tar_input", None)
        if ar is not None and tar is not None:
            return ar, tar
    raise UserError("--alpha/--beta need a model whose trunk exposes its last layer's activations "
                    "(awd_lstm, on_lstm); this one does not")


def add_ar_tar(loss: torch.Tensor, model: nn.Module, alpha: float, beta: float) -> torch.Tensor:
    """``loss`` plus AR and TAR of ``model``'s last training forward (each only when its weight is non-zero,
    as ``if args.alpha:`` / ``if args.beta:``)."""
    if not (alpha or beta):
        return loss
    dropped, raw = last_activations(model)
    if alpha:
        loss = loss + activation_regularization(dropped, alpha)
    if beta:
        loss = loss + temporal_activation_regularization(raw, beta)
    return loss


class VariableBPTT:
    """Draws AWD-LSTM's window lengths from its own numpy ``RandomState(seed)`` (theirs is numpy's global
    RNG after ``np.random.seed(args.seed)``, used for nothing else, so the same seed gives the same windows).
    Its state goes into the checkpoint for an exact resume."""

    def __init__(self, bptt: int, seed: int, max_seq_len_delta: int | None = None):
        if bptt < 1:
            raise UserError(f"--bptt must be at least 1, got {bptt}")
        if max_seq_len_delta is not None and max_seq_len_delta < 0:
            raise UserError(f"--max-seq-len-delta must not be negative, got {max_seq_len_delta}")
        self.bptt, self.max_seq_len_delta = bptt, max_seq_len_delta
        self.rng = np.random.RandomState(seed)

    def draw(self) -> int:
        """One window length (``main.py`` ``train()``)."""
        base = self.bptt if self.rng.random_sample() < 0.95 else self.bptt / 2.0
        seq_len = max(5, int(self.rng.normal(base, 5)))
        if self.max_seq_len_delta is not None:
            seq_len = min(seq_len, self.bptt + self.max_seq_len_delta)
        return seq_len

    def windows(self, rows: int) -> list[tuple[int, int]]:
        """``(start, drawn length)`` of every window of an epoch over ``rows`` time steps."""
        out, i = [], 0
        while i < rows - 1 - 1:
            seq_len = self.draw()
            out.append((i, seq_len))
            i += seq_len
        return out

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, gauss = self.rng.get_state(legacy=True)
        return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                "has_gauss": int(has_gauss), "gauss": float(gauss)}

    def load_state_dict(self, state: dict) -> None:
        keys = state["keys"].numpy().astype(np.uint32)
        self.rng.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["gauss"]))


@contextlib.contextmanager
def scaled_lr(optimizer: torch.optim.Optimizer, seq_len: int, bptt: int):
    """Every param group's lr set to ``lr * seq_len / bptt`` inside the block (longer windows take
    proportionally larger steps), restored after it; theirs does this to ``param_groups[0]``, their only
    group."""
    saved = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * seq_len / bptt
    try:
        yield
    finally:
        for g, lr in zip(optimizer.param_groups, saved):
            g["lr"] = lr


@dataclass(frozen=True)
class LoopOptions:
    """The training loop's share of a family's options (AWD-LSTM's): AR and TAR weights, variable BPTT."""

    alpha: float = 0.0
    beta: float = 0.0
    variable_bptt: bool = False
    max_seq_len_delta: int | None = None  # None: window lengths uncapped

    def windows(self, bptt: int, seed: int) -> VariableBPTT | None:
        """The window sampler when variable BPTT is on, else None (fixed ``bptt`` windows)."""
        return VariableBPTT(bptt, seed, self.max_seq_len_delta) if self.variable_bptt else None


def loop_options(model_config) -> LoopOptions:
    """What ``model_config``'s family asks of the loop; a family without these options (the stacked cells)
    gets none of them, so its training is exactly what it was."""
    opts = getattr(model_config, "options", None) or {}
    return LoopOptions(alpha=float(opts.get("alpha", 0.0)), beta=float(opts.get("beta", 0.0)),
                       variable_bptt=bool(opts.get("variable_bptt", False)),
                       max_seq_len_delta=opts.get("max_seq_len_delta") or None)  # 0: uncapped
