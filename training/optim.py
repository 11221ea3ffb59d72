"""Optimizers by name (``--optimizer``). Each exposes ``on_epoch_end(val_loss)`` and ``eval_weights()``.

``eval_weights()`` is a context manager that puts the weights to evaluate and save into the model
(averaging optimizers swap their averages in); for plain SGD it changes nothing.
"""

from __future__ import annotations

import contextlib

import torch

from selfish_deploy.errors import UserError


class AnnealedSGD(torch.optim.SGD):
    """SGD whose learning rate is divided by ``anneal`` when validation stops improving
    (pytorch/examples ``word_language_model``)."""

    def __init__(self, params, lr: float, anneal: float, weight_decay: float = 0.0):
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.anneal = anneal
        self.best_val: float | None = None

    def on_epoch_end(self, val_loss: float) -> dict:
        if self.best_val is None or val_loss < self.best_val:
            self.best_val = val_loss
        elif self.anneal > 1.0:
            for g in self.param_groups:
                g["lr"] /= self.anneal
        return {"lr": self.param_groups[0]["lr"], "phase": "sgd"}

    def eval_weights(self):
        return contextlib.nullcontext()

    def state_dict(self):
        state = super().state_dict()
        state["best_val"] = self.best_val
        return state

    def load_state_dict(self, state):
        state = dict(state)
        self.best_val = state.pop("best_val", None)
        super().load_state_dict(state)


OPTIMIZERS = ("sgd",)


def build_optimizer(name: str, model: torch.nn.Module, config, masks=None):
    if name == "sgd":
        return AnnealedSGD(model.parameters(), lr=config.lr, anneal=config.anneal,
                           weight_decay=config.weight_decay)
    raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
