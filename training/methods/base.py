"""The contract between the training loop and a sparse-training method.

Per batch the loop calls, in order::

    loss.backward()
    method.before_step(step)     # gradients are dense here (RigL/SNFS read them)
    masks.mask_grads_()
    clip, optimizer.step()
    masks.apply_()
    method.after_step(step)      # may change masks; returns a metrics record when it did

``before_step`` gets the number of steps taken so far, ``after_step`` that number plus one (the step just
taken). ``state_dict``/``load_state_dict`` carry whatever the method needs for an exact resume.
"""

from __future__ import annotations

import torch

from selfish_deploy.masks import MaskRegistry


class SparseMethod:
    name = "base"
    dense = False  # True: masks are all ones and never change
    initial_density_one = False  # True: start from all-ones masks and prune towards --density (GMP)
    needs_momentum = False  # True: the method assumes momentum SGD (SNFS)
    default_update_every = 0  # steps between topology updates when --update-every is not given; 0: per epoch
    default_death_rate = 0.5  # when --death-rate is not given

    def __init__(self, masks: MaskRegistry, total_steps: int, config, generator: torch.Generator):
        self.masks = masks
        self.total_steps = total_steps
        self.config = config
        self.generator = generator

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.total_steps // max(1, getattr(self.config, "epochs", 1)))

    @property
    def update_every(self) -> int:
        every = getattr(self.config, "update_every", None)
        every = self.default_update_every if every is None else every
        return every if every > 0 else self.steps_per_epoch

    @property
    def initial_death_rate(self) -> float:
        rate = getattr(self.config, "death_rate", None)
        return self.default_death_rate if rate is None else rate

    def is_update_step(self, step: int) -> bool:
        """Every ``update_every`` steps, never after the last one."""
        return 0 < step < self.total_steps and step % self.update_every == 0

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> dict | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
