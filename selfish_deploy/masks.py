"""Binary masks over every weight matrix, with an exact non-zero count per tensor.

The registry is keyed by parameter name (tied weights appear once, so they share one mask). Which tensors are
masked, and the row blocks (gates) of each, come from the model's family and decoder (``families``); biases
stay dense. The count ``target_nnz[name]`` is fixed at construction; sparse-training methods move non-zeros
around but must keep it (checked by ``check``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .errors import UserError
from .families import ALL, block_densities, gate_blocks, gate_rows, get_family, sparse_names
from .model import ModelConfig

DISTRIBUTIONS = ("uniform", "erk")


def sparse_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The masked parameters in ``named_parameters`` order (tied duplicates already dropped): the registry's
    ``sparse_names`` for a language model (``model.config``), every 2-D parameter of any other module."""
    config = getattr(model, "config", None)
    if isinstance(config, ModelConfig):
        names = set(sparse_names(config))
        return {n: p for n, p in model.named_parameters() if n in names}
    return {n: p for n, p in model.named_parameters() if p.dim() == 2}


def erk_densities(shapes: dict[str, tuple[int, int]], density: float) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (RigL, Evci et al. 2020): density_l ∝ (rows + cols) / (rows * cols),
    scaled so the total non-zero count equals ``density`` times all weights; layers that would exceed
    1 are made dense and the rest rescaled."""
    total = sum(r * c for r, c in shapes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(r * c for n, (r, c) in shapes.items() if n in dense)
        raw = {n: (r + c) / (r * c) for n, (r, c) in shapes.items() if n not in dense}
        eps = budget / sum(raw[n] * shapes[n][0] * shapes[n][1] for n in raw)
        over = {n for n in raw if eps * raw[n] > 1.0}
        if not over:
            return {n: (1.0 if n in dense else eps * raw[n]) for n in shapes}
        dense |= over


def random_mask(shape: tuple[int, ...], nnz: int, generator: torch.Generator) -> torch.Tensor:
    numel = math.prod(shape)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=generator)[:nnz]] = True
    return mask.view(shape)


class MaskRegistry:
    """Masks for the weight matrices of ``model``; call ``apply_`` after every optimizer step.

    Per-gate densities use the model's family (``model.config``); a module without one (the Reber-grammar
    classifiers) names its cell with ``arch``, whose blocks apply to its ``rnns.*`` matrices.
    """

    def __init__(self, model: nn.Module, density: float = 1.0, distribution: str = "uniform",
                 generator: torch.Generator | None = None, arch: str | None = None):
        if not 0.0 < density <= 1.0:
            raise UserError(f"density must be in (0, 1], got {density}")
        if distribution not in DISTRIBUTIONS:
            raise UserError(f"unknown density distribution {distribution!r}; choose from {DISTRIBUTIONS}")
        config = getattr(model, "config", None)
        if isinstance(config, ModelConfig):
            family = get_family(config.arch)
            self._blocks = lambda name: gate_blocks(name, config)
            self._rows = lambda name: gate_rows(name, config)
        else:
            family = get_family(arch or "lstm")
            self._blocks = lambda name: family.gates if name.startswith(family.module_name + ".") else ALL
            self._rows = lambda name: None
        self.arch, self._trunk_prefix = family.name, family.module_name + "."
        self.params = sparse_parameters(model)
        shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        if distribution == "erk" and density < 1.0:
            per_tensor = erk_densities(shapes, density)
        else:
            per_tensor = {n: density for n in shapes}
        self.target_nnz = {n: max(1, round(per_tensor[n] * math.prod(s))) for n, s in shapes.items()}
        generator = generator or torch.Generator().manual_seed(0)
        device = next(iter(self.params.values())).device
        self._multipliers: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.masks = {
            n: random_mask(shapes[n], self.target_nnz[n], generator).to(device) for n in self.params
        }
        self.apply_()

    def __iter__(self):
        return iter(self.masks)

    def multiplier(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The mask as 0/1 in ``like``'s dtype and device, cached until the mask changes (replaced, or
        edited in place, which bumps its version). Multiplying by it is ~20x faster than ``masked_fill_``
        on a CPU; the only difference, -0.0 for negative dead entries, compares equal to 0."""
        m = self.masks[name]
        hit = self._multipliers.get(name)
        if hit is None or hit[0] is not m or hit[1] != m._version or hit[2].dtype != like.dtype \
                or hit[2].device != like.device:
            hit = (m, m._version, m.to(device=like.device, dtype=like.dtype))
            self._multipliers[name] = hit
        return hit[2]

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero every weight outside its mask."""
        for n, p in self.params.items():
            p.mul_(self.multiplier(n, p))

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero gradients outside the mask, so optimizer state never builds up on dead weights."""
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.multiplier(n, p.grad))

    @torch.no_grad()
    def mask_momentum_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer's momentum on dead weights after a topology update (as sparselearning's
        ``reset_momentum``): otherwise a pruned weight's old momentum moves it the moment it regrows."""
        for n, p in self.params.items():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                buf.mul_(self.multiplier(n, buf))

    def nnz(self, name: str) -> int:
        return int(self.masks[name].sum())

    def density(self, name: str) -> float:
        return self.nnz(name) / self.masks[name].numel()

    def gate_blocks(self, name: str) -> tuple[str, ...]:
        """Names of the row blocks stacked in tensor ``name`` (``("all",)`` when it stacks nothing)."""
        return self._blocks(name)

    def trunk_names(self) -> list[str]:
        """The masked tensors of the trunk (not the embedding or the decoder), in registry order."""
        return [n for n in self.masks if n.startswith(self._trunk_prefix)]

    def gate_densities(self, name: str) -> list[float]:
        """Density of each gate's row block of a gate-stacked matrix (one value for other matrices)."""
        return block_densities(self.masks[name], self.gate_blocks(name), self._rows(name))

    def total_density(self) -> float:
        return sum(self.target_nnz.values()) / sum(m.numel() for m in self.masks.values())

    def report(self) -> dict:
        """Per-tensor density and per-gate densities, for ``config.json`` and ``metrics.jsonl``."""
        return {
            n: {"density": self.density(n), "nnz": self.nnz(n), "gates": self.gate_densities(n)}
            for n in self.masks
        }

    def check(self) -> None:
        """Raise if any tensor's nnz drifted or a weight is alive outside its mask."""
        for n, p in self.params.items():
            if self.nnz(n) != self.target_nnz[n]:
                raise AssertionError(f"{n}: mask has {self.nnz(n)} non-zeros, expected {self.target_nnz[n]}")
            if bool((p.detach()[~self.masks[n]] != 0).any()):
                raise AssertionError(f"{n}: weights alive outside the mask")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: m.detach().cpu().clone() for n, m in self.masks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.masks):
            raise UserError(f"mask names differ: checkpoint {sorted(state)} vs model {sorted(self.masks)}")
        for n, m in state.items():
            if m.shape != self.masks[n].shape:
                raise UserError(f"mask {n}: shape {tuple(m.shape)} vs model {tuple(self.masks[n].shape)}")
            self.masks[n] = m.to(dtype=torch.bool, device=self.masks[n].device)
            self.target_nnz[n] = int(self.masks[n].sum())
        self.apply_()
