"""Full trainer state for an exact ``--resume``: ``RUN_DIR/checkpoint/{state.safetensors,state.json}``.

Nested state (optimizer, method, RNG, loop counters) is split into tensors, stored in safetensors under
their path (``optimizer/state/0/momentum_buffer``), and JSON for everything else, with each tensor
leaf replaced by ``{"__tensor__": path}``. Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from selfish_deploy.errors import UserError
from selfish_deploy.rundir import read_json, read_safetensors, write_json

CHECKPOINT_DIR = "checkpoint"


def split_tensors(obj, path: str, tensors: dict[str, torch.Tensor]):
    """JSON-able copy of ``obj`` whose tensors moved into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if obj and not all(isinstance(k, str) for k in obj):
            return {"__intkeys__": {str(k): split_tensors(v, f"{path}/{k}", tensors) for k, v in obj.items()}}
        return {k: split_tensors(v, f"{path}/{k}", tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj, tensors: dict[str, torch.Tensor]):
    """Inverse of ``split_tensors``."""
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            if obj["__tensor__"] not in tensors:
                raise UserError(f"checkpoint is missing tensor {obj['__tensor__']}")
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__intkeys__"}:
            return {int(k): join_tensors(v, tensors) for k, v in obj["__intkeys__"].items()}
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Write ``state`` (nested dicts, lists, scalars, tensors) atomically enough: tensors, then JSON."""
    d = Path(run_dir) / CHECKPOINT_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = split_tensors(state, "", tensors)
    tmp = d / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(d / "state.safetensors")
    write_json(d / "state.json", meta)


def load_checkpoint(run_dir: Path) -> dict:
    d = Path(run_dir) / CHECKPOINT_DIR
    if not d.is_dir():
        raise UserError(f"{run_dir} has no checkpoint/ to resume from")
    return join_tensors(read_json(d / "state.json"), read_safetensors(d / "state.safetensors"))


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
