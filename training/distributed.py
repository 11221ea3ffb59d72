"""Data-parallel training over the processes ``torchrun`` starts (gloo on CPU, nccl on CUDA).

Run it as ``torchrun --nproc_per_node N -m selfish_deploy.training.cli ...`` (or ``torchrun --nproc_per_node N
$(which selfish-train) ...``); without torchrun's environment everything here is a no-op for one process.

Each rank trains on its own contiguous slice of the batch *columns* (``--batch-size`` is the global batch, so
it must divide by N)::

    batchify(train, B=4)          rank 0 of 2     rank 1 of 2
        ┌ a g m s ┐                ┌ a g ┐         ┌ m s ┐
        │ b h n t │                │ b h │         │ n t │
        │ c i o u │      ->        │ c i │         │ o u │
        └ d j p v ┘                └ d j ┘         └ p v ┘   (T, B/N) each, hidden state per column

Gradients are averaged over ranks right after ``backward`` (before the sparse method reads them), so every
step sees the same global batch, the same averaged gradient and the same learning rate as one process
with ``--batch-size B``: the runs differ only in float summation order and in dropout draws (each rank
seeds its dropout with ``seed + rank``). Validation and test columns are split the same way when
``--eval-batch-size`` divides by N, and the summed losses are all-reduced.

Masks: every rank builds them from the same seed and runs the same method on the same weights and
averaged gradients, so they decide the same topology; after every topology update rank 0's masks are
broadcast anyway (cheap, and it rules out ties broken differently), and at every epoch end a digest of
weights and masks is compared across ranks, and a mismatch stops training. Only rank 0 writes files and
logs progress.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from selfish_deploy.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join torchrun's process group (if ``WORLD_SIZE`` > 1) and pick this rank's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)  # one GPU per local rank
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not world.is_main:  # only rank 0 reports progress; warnings and errors still show
        logging.getLogger("selfish_deploy").setLevel(logging.WARNING)
    return world, device


def teardown(world: World) -> None:
    if world.enabled and dist.is_initialized():
        dist.destroy_process_group()


def columns(n: int, world: World, what: str = "--batch-size") -> slice:
    """This rank's contiguous slice of ``n`` batch columns."""
    if n % world.size:
        raise UserError(f"{what} {n} must be a multiple of the number of processes ({world.size})")
    per = n // world.size
    return slice(world.rank * per, (world.rank + 1) * per)


def barrier(world: World) -> None:
    if world.enabled:
        dist.barrier()


@torch.no_grad()
def average_gradients(params: list[torch.Tensor], world: World) -> None:
    """Replace every gradient by its mean over ranks (one flat all-reduce)."""
    if not world.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world.size)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64)."""
    if not world.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def broadcast_masks(masks: dict[str, torch.Tensor], world: World) -> None:
    """Overwrite every rank's masks with rank 0's (in place)."""
    if not world.enabled:
        return
    for m in masks.values():
        buf = m.to(torch.uint8)  # gloo has no bool all-reduce/broadcast
        dist.broadcast(buf, src=0)
        m.copy_(buf.bool())


@torch.no_grad()
def broadcast_parameters(params: list[torch.Tensor], world: World) -> None:
    """Start every rank from rank 0's weights."""
    if world.enabled:
        for p in params:
            dist.broadcast(p, src=0)


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names and exact bytes of ``tensors``."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()[:16]


def gather_objects(obj, world: World) -> list:
    """``obj`` from every rank, in rank order (pickled by torch.distributed; used for RNG states)."""
    if not world.enabled:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def check_in_sync(tensors: dict[str, torch.Tensor], world: World, where: str) -> list[str]:
    """Digest of ``tensors`` on every rank; raise if any rank differs from rank 0."""
    digests = gather_objects(digest(tensors), world)
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks diverged {where}: weight/mask digests {digests}")
    return digests
