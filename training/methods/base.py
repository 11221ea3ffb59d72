"""The contract between the training loop and a sparse-training method.

Per batch the loop calls, in order (the authors' ``main.py`` ``train()``: backward, ``clip_grad_norm_`` over
every gradient, then ``mask.step()``, i.e. the optimizer step and ``apply_mask``)::

    loss.backward()
    clip_grad_norm_(dense gradients)   # --clip-masked-grad: after mask_grads_ instead (and before_step first)
    method.before_step(step)           # dense gradients, as the optimizer will step with them (RigL, SNFS)
    masks.mask_grads_()
    optimizer.step()
    masks.apply_()
    method.after_step(step)            # --update-every N: may change masks; returns a record when it did

and once per epoch, after validation, the best-checkpoint choice and the optimizer's ``on_epoch_end`` (the
NT-ASGD trigger), as ``main.py`` calls ``mask.at_end_of_epoch``::

    method.at_epoch_end(step)          # per-epoch methods (update_every 0) update here

Before each epoch the loop calls ``method.begin_epoch(end_step, last)``: the step count at which this epoch
ends and whether it is the run's last. Variable-length BPTT (AWD-LSTM, ON-LSTM) makes epochs about 2.6%
longer than the fixed-window ``steps_per_epoch`` that ``total_steps`` counts, as their ``T_max`` does; a
per-epoch update then still runs at every epoch's end but the last (theirs runs one there too, after saving the
model it tests), and RigL keeps the gradient of the epoch's real last batch.

``before_step`` gets the number of steps taken so far, ``after_step`` and ``at_epoch_end`` that number after
the step just taken. Both return ``update(step)``'s record when they updated. ``state_dict`` /
``load_state_dict`` carry whatever the method needs for an exact resume.
"""

from __future__ import annotations

import torch

from selfish_deploy.masks import MaskRegistry


class SparseMethod:
    name = "base"
    dense = False  # True: masks are all ones and never change
    initial_density_one = False  # True: start from all-ones masks and prune towards --density (GMP)
    default_update_every = 0  # steps between topology updates when --update-every is not given; 0: per epoch
    default_death_rate = 0.5  # when --death-rate is not given

    def __init__(self, masks: MaskRegistry, total_steps: int, config, generator: torch.Generator):
        self.masks = masks
        self.total_steps = total_steps
        self.config = config
        self.generator = generator
        self.epoch_end: int | None = None  # from begin_epoch; None: epochs of steps_per_epoch steps
        self.last_epoch = False

    def begin_epoch(self, end_step: int, last: bool) -> None:
        """The epoch starting now ends after step ``end_step``; ``last``: the run's final epoch."""
        self.epoch_end, self.last_epoch = end_step, last

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.total_steps // max(1, getattr(self.config, "epochs", 1)))

    @property
    def per_epoch(self) -> bool:
        """True: one update per epoch, after validation (``at_epoch_end``), not inside the loop."""
        every = getattr(self.config, "update_every", None)
        return (self.default_update_every if every is None else every) == 0

    @property
    def update_every(self) -> int:
        """Steps between updates (``steps_per_epoch`` for a per-epoch method)."""
        every = getattr(self.config, "update_every", None)
        every = self.default_update_every if every is None else every
        return every if every > 0 else self.steps_per_epoch

    @property
    def initial_death_rate(self) -> float:
        rate = getattr(self.config, "death_rate", None)
        return self.default_death_rate if rate is None else rate

    def update_allowed(self, step: int) -> bool:
        """Never before the first step nor after the last one."""
        return 0 < step < self.total_steps

    def is_update_step(self, step: int) -> bool:
        """An update inside the loop after ``step``: every ``update_every`` steps (never per-epoch methods)."""
        return not self.per_epoch and self.update_allowed(step) and step % self.update_every == 0

    def epoch_update_allowed(self, step: int) -> bool:
        """A per-epoch update at the end of the epoch closing at ``step``: never after the run's last step, and
        otherwise as ``update_allowed`` with the step clamped into ``total_steps`` (variable-length epochs run a
        little past it)."""
        if self.epoch_end is None:
            return self.update_allowed(step)
        return step > 0 and not self.last_epoch and self.update_allowed(min(step, self.total_steps - 1))

    def update_follows(self, step: int) -> bool:
        """An update comes right after ``step``: in the loop, or at the end of the epoch ``step`` closes."""
        if self.per_epoch:
            at_end = step == self.epoch_end if self.epoch_end is not None else step % self.steps_per_epoch == 0
            return at_end and self.epoch_update_allowed(step)
        return self.is_update_step(step)

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> dict | None:
        return self.update(step) if self.is_update_step(step) else None

    def at_epoch_end(self, step: int) -> dict | None:
        return self.update(step) if self.per_epoch and self.epoch_update_allowed(step) else None

    def update(self, step: int) -> dict | None:
        """Change the topology after ``step``; the ``metrics.jsonl`` record, or None (nothing to change)."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
