"""The contract between the training loop and a sparse-training method.

Per batch the loop calls, in order::

    loss.backward()
    method.before_step(step)     # gradients are dense here (RigL/SNFS read them)
    masks.mask_grads_()
    clip, optimizer.step()
    masks.apply_()
    method.after_step(step)      # may change masks; returns a metrics record when it did

``state_dict``/``load_state_dict`` carry whatever the method needs for an exact resume.
"""

from __future__ import annotations

import torch

from selfish_deploy.masks import MaskRegistry


class SparseMethod:
    name = "base"
    dense = False  # True: masks are all ones and never change

    def __init__(self, masks: MaskRegistry, total_steps: int, config, generator: torch.Generator):
        self.masks = masks
        self.total_steps = total_steps
        self.config = config
        self.generator = generator

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> dict | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
