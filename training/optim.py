"""Optimizers by name (``--optimizer``): SNT-ASGD (the default) and SGD with plateau annealing.

Both expose ``on_epoch_end(val_loss, epoch) -> dict`` (metrics for the epoch record: ``lr``, ``phase``) and
``eval_weights()``, a context manager that puts the weights to evaluate and save into the model (SNT-ASGD
swaps its masked averages in; plain SGD changes nothing). Both use ``--momentum`` (default 0, every
method alike: the authors' ``main.py`` builds ``torch.optim.SGD(lr, weight_decay)`` and ``Sparse_ASGD`` has
no momentum; issue 15).

SNT-ASGD (Selfish-RNN, Liu et al. ICML 2021) is AWD-LSTM's non-monotonically triggered ASGD made
mask-aware. Phase "sgd": plain SGD at ``--lr``; after each epoch the validation loss is appended to a
history and the optimizer switches when ``t > nonmono and val_loss > min(history[:-nonmono])`` (Merity et
al. 2018; ``--asgd-after E`` forces the switch after epoch E at the latest). Phase "asgd": the same SGD
step at ``--lr`` again, plus a running average of the iterates, one counter per weight (``--asgd-restarts E``:
when averaging already, start again after epoch E, averages empty and the rate back at ``--lr``, as
ON-LSTM's ``main_ONLSTM.py`` re-creates ``Sparse_ASGD`` at its ``--finetuning`` and ``--finetuning2``
epochs)::

    alive weight:  age += 1;  avg += (w - avg) / age      (age 1 -> avg = w: a regrown weight restarts)
    dead weight:   age = 0,   avg = 0                     (the averaged model has exactly the mask's zeros)

Biases and other unmasked tensors use one age for the whole tensor (plain ASGD).

Relation to the paper's SNT-ASGD as its authors run it (Selfish-RNN ``main.py`` + ``Sparse_ASGD.py``):
the same SGD phase (no momentum, no annealing), the same trigger checked after every epoch, the same switch
to averaging at the initial learning rate (``Sparse_ASGD(lr=args.lr, t0=0, lambd=0)``), the same per-weight
step counter zeroed while the weight is masked out, the average multiplied by the mask, and validation and
saving on the averages swapped in. Differences: (1) their counter (from ``torch.optim.ASGD``) copies the
iterate into the average on a weight's first two alive steps, so it averages from the second step on; we
average from the first (the exact running mean above). (2) A weight pruned and regrown in one update keeps
its counter there. Here so does Selfish-RNN's (it keeps its value too, as theirs), while the methods that
regrow such a weight at 0.0 (SET, RigL, SNFS, DSR) restart it like any regrown weight (see below).
(3) ``--momentum`` > 0 applies in the averaged phase too; ``Sparse_ASGD`` has none.

Mask changes are noticed without help from the trainer: before every step (and before evaluating) each
mask's identity and in-place version counter are compared with the last ones seen, and ages and averages
of a changed tensor are re-synced: dead weights get age 0 and average 0; weights that are alive and were
dead, or are alive and exactly 0.0, restart (age 0). The second rule catches a weight pruned and regrown
at 0.0 in the same update (SNFS may regrow what it just removed): every method grows new weights at 0.0
(``topology.grow_``), and this check runs before the next step moves them. A just-died weight that
Selfish-RNN draws again keeps its value, so it keeps its age and average, as in ``Sparse_ASGD``, whose
step counter only resets where the mask is 0.
"""

from __future__ import annotations

import contextlib
import math

import torch

from selfish_deploy.errors import UserError

MOMENTUM = 0.9  # Dettmers & Zettlemoyer's SNFS momentum: what --momentum 0.9 gives (snfs had it forced before)


class AnnealedSGD(torch.optim.SGD):
    """SGD whose learning rate is divided by ``anneal`` when validation stops improving
    (pytorch/examples ``word_language_model``)."""

    def __init__(self, params, lr: float, anneal: float, weight_decay: float = 0.0, momentum: float = 0.0):
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.anneal = anneal
        self.best_val: float | None = None

    def on_epoch_end(self, val_loss: float, epoch: int | None = None) -> dict:
        lr = self.param_groups[0]["lr"]  # the rate this epoch trained with
        if self.best_val is None or val_loss < self.best_val:
            self.best_val = val_loss
        elif self.anneal > 1.0:
            for g in self.param_groups:
                g["lr"] /= self.anneal
        return {"lr": lr, "phase": "sgd"}

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


class SNTASGD(torch.optim.SGD):
    """Sparse non-monotonically triggered ASGD (see the module docstring)."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor] | None,
                 lr: float, weight_decay: float = 0.0, momentum: float = 0.0, nonmono: int = 5,
                 asgd_after: int | None = None, restarts: tuple[int, ...] = ()):
        self.names = list(named_params)
        super().__init__(list(named_params.values()), lr=lr, weight_decay=weight_decay, momentum=momentum)
        self.named = dict(named_params)
        # Live view of the registry's dict: methods may replace or edit mask tensors at any step.
        self.masks = masks if masks is not None else {}
        self.base_lr = lr
        self.nonmono = nonmono
        self.asgd_after = asgd_after
        self.restarts = tuple(restarts)  # epochs after which an averaged phase starts again
        self.phase = "sgd"
        self.history: list[float] = []  # validation losses of the SGD phase, one per epoch
        self.asgd_steps = 0  # steps taken in the averaged phase
        self._seen: dict[str, tuple[int, int]] = {}
        self._scratch: dict[str, torch.Tensor] = {}
        if asgd_after == 0:
            self.start_averaging()

    # -- phase ---------------------------------------------------------------------------------
    def on_epoch_end(self, val_loss: float, epoch: int | None = None) -> dict:
        """After epoch ``epoch`` (1-based) validated at ``val_loss``: ``switch`` in the record when averaging
        begins, ``restart`` when an averaged phase starts again."""
        info = {"lr": self.param_groups[0]["lr"], "phase": self.phase}
        if self.phase == "asgd" and epoch in self.restarts:
            self.start_averaging()
            info["restart"] = True
        elif self.phase == "sgd":
            older = self.history[: len(self.history) - self.nonmono]
            triggered = len(self.history) > self.nonmono and val_loss > min(older)
            forced = self.asgd_after is not None and len(self.history) + 1 >= self.asgd_after
            self.history.append(val_loss)
            if triggered or forced:
                self.start_averaging()
                info["switch"] = "trigger" if triggered else "asgd_after"
        return info

    @torch.no_grad()
    def start_averaging(self) -> None:
        """Enter (or restart) the averaged phase: learning rate back to ``--lr``, every average empty."""
        self.phase = "asgd"
        for g in self.param_groups:
            g["lr"] = self.base_lr
        for name, p in self.named.items():
            st = self.state[p]
            st["avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            if name in self.masks:
                # age inf marks "dead": 1/age = 0 keeps its average at 0 (see _average)
                st["age"] = torch.where(self.masks[name], 0.0, math.inf).to(p.dtype)
                self._seen[name] = self._version(name)
            else:
                st["age"] = 0

    # -- step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        if self.phase == "asgd":
            for name in self.masks:
                self._sync(name)  # before the update moves regrown weights off 0.0
        loss = super().step(closure)
        if self.phase == "asgd":
            self._average()
        return loss

    def _version(self, name: str) -> tuple[int, int]:
        m = self.masks[name]
        return id(m), m._version

    @torch.no_grad()
    def _sync(self, name: str) -> None:
        """Bring ages and averages of ``name`` in line with its current mask if it changed."""
        if self._seen.get(name) == self._version(name):
            return
        mask, p, st = self.masks[name], self.named[name], self.state[self.named[name]]
        regrown = mask & (torch.isinf(st["age"]) | (p == 0))  # new weights start at 0.0
        st["age"].masked_fill_(regrown, 0.0)
        st["avg"].masked_fill_(regrown, 0.0)
        dead = ~mask
        st["age"].masked_fill_(dead, math.inf)  # age "0" while dead, stored as inf: 1/age = 0
        st["avg"].masked_fill_(dead, 0.0)
        self._seen[name] = self._version(name)

    @torch.no_grad()
    def _average(self) -> None:
        self.asgd_steps += 1
        for name, p in self.named.items():
            st = self.state[p]
            if name in self.masks:
                st["age"].add_(1.0)
                weight = self._scratch.get(name)
                if weight is None:
                    weight = self._scratch[name] = torch.empty_like(p)
                torch.reciprocal(st["age"], out=weight)  # 0 where dead
                # avg += (w - avg) / age on alive weights; the (dead) rest stays 0. p may still hold
                # momentum-driven values on dead weights here (the trainer re-applies masks after the
                # step): their weight is 0, so they never reach the average.
                st["avg"].lerp_(p, weight)
            else:
                st["age"] += 1
                st["avg"].lerp_(p, 1.0 / st["age"])

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def averaged(self) -> dict[str, torch.Tensor]:
        """The weights to evaluate: masked averages (the raw weight where nothing was averaged yet)."""
        out = {}
        for name, p in self.named.items():
            if self.phase != "asgd":
                out[name] = p.detach().clone()
                continue
            st = self.state[p]
            if name in self.masks:
                self._sync(name)
                out[name] = torch.where(st["age"] == 0, p, st["avg"]) * self.masks[name]
            else:
                out[name] = (st["avg"] if st["age"] > 0 else p).detach().clone()
        return out

    def ages(self, name: str) -> torch.Tensor:
        """Per-weight ages of ``name`` (0 on dead weights), for inspection and tests."""
        age = self.state[self.named[name]]["age"]
        return age.nan_to_num(posinf=0.0) if isinstance(age, torch.Tensor) else torch.tensor(float(age))

    @contextlib.contextmanager
    def eval_weights(self):
        if self.phase != "asgd":
            yield
            return
        averaged = self.averaged()
        raw = {n: p.detach().clone() for n, p in self.named.items()}
        with torch.no_grad():
            for n, p in self.named.items():
                p.copy_(averaged[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.named.items():
                    p.copy_(raw[n])

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self):
        if self.phase == "asgd":
            for name in self.masks:
                self._sync(name)  # the saved ages match the saved masks
        state = super().state_dict()
        state["snt_asgd"] = {"phase": self.phase, "history": list(self.history), "asgd_steps": self.asgd_steps,
                             "base_lr": self.base_lr}
        return state

    def load_state_dict(self, state):
        state = dict(state)
        extra = state.pop("snt_asgd", None)
        if extra is None:
            raise UserError("checkpoint optimizer state is not SNT-ASGD's (was the run trained with --optimizer sgd?)")
        super().load_state_dict(state)
        self.phase, self.history = extra["phase"], list(extra["history"])
        self.asgd_steps, self.base_lr = extra["asgd_steps"], extra["base_lr"]
        for name in self.masks:
            self._seen[name] = self._version(name)  # masks are loaded first and match the saved ages


OPTIMIZERS = ("snt-asgd", "sgd")


def build_optimizer(name: str, model: torch.nn.Module, config, masks=None, momentum: float | None = None):
    """The optimizer ``name`` over ``model``'s parameters; ``masks`` (name -> bool tensor, live) for SNT-ASGD;
    ``momentum`` None: ``config.momentum`` (0 when the config has none)."""
    if momentum is None:
        momentum = getattr(config, "momentum", 0.0)
    if name == "sgd":
        return AnnealedSGD(model.parameters(), lr=config.lr, anneal=config.anneal,
                           weight_decay=config.weight_decay, momentum=momentum)
    if name == "snt-asgd":
        return SNTASGD(dict(model.named_parameters()), masks, lr=config.lr, weight_decay=config.weight_decay,
                       momentum=momentum, nonmono=config.nonmono, asgd_after=config.asgd_after,
                       restarts=tuple(getattr(config, "asgd_restarts", ()) or ()))
    raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
