"""The run directory: what training writes and export reads.

    RUN_DIR/
      config.json        resolved model + training config, vocabulary size, density per tensor, results
      model.safetensors  best-validation weights (masked) and their masks under ``mask.<param name>``
      vocab.txt          one token per line; line number = token id
      metrics.jsonl      one JSON record per epoch / topology update / test evaluation
      checkpoint/        latest full trainer state for ``--resume`` (see training.checkpoint)
      plots/             PNG plots

Tied weights are stored once (under ``encoder.weight``). Nothing is pickled.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError
from .model import ModelConfig, RNNLM
from .vocab import Vocabulary

RUN_FORMAT = "selfish-run"
RUN_FORMAT_VERSION = 1
MASK_PREFIX = "mask."
# Everything training writes into a run directory (the layout above); nothing else there is ours.
RUN_ENTRIES = ("config.json", "model.safetensors", "vocab.txt", "metrics.jsonl", "checkpoint", "plots")


def holds_run(path: Path) -> bool:
    """Whether ``path`` has any part of a run in it (a finished one, or one stopped before its end)."""
    return any((Path(path) / name).exists() for name in RUN_ENTRIES)


def clear_run(path: Path) -> None:
    """Delete a previous run's entries, and only those, so no stale checkpoint outlives a replacement."""
    for name in RUN_ENTRIES:
        entry = Path(path) / name
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"missing {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"missing {path.name} in {path.parent}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors file: {e}") from None


def weights_and_masks(model: RNNLM, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flat tensor dict for ``model.safetensors``: parameters (tied ones once) plus masks."""
    out = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    out.update({MASK_PREFIX + n: m.cpu().contiguous() for n, m in masks.items()})
    return out


def save_weights(path: Path, model: RNNLM, masks: dict[str, torch.Tensor]) -> None:
    tmp = path.with_suffix(".tmp")
    save_file(weights_and_masks(model, masks), str(tmp), metadata={"format": RUN_FORMAT})
    tmp.replace(path)


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    config: dict
    model_config: ModelConfig
    weights: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    vocab: Vocabulary

    def build_model(self) -> RNNLM:
        """The trained model in eval mode, loaded strictly (a missing weight is an error)."""
        model = RNNLM(self.model_config)
        params = dict(model.named_parameters())
        missing = set(params) - set(self.weights)
        unexpected = set(self.weights) - set(params)
        if missing or unexpected:
            raise UserError(f"{self.path}: weights do not match the config (missing {sorted(missing)}, "
                            f"unexpected {sorted(unexpected)})")
        with torch.no_grad():
            for n, p in params.items():
                if p.shape != self.weights[n].shape:
                    raise UserError(f"{self.path}: {n} has shape {tuple(self.weights[n].shape)}, "
                                    f"config implies {tuple(p.shape)}")
                p.copy_(self.weights[n])
        return model.eval()


def load_run(path: str | Path) -> Run:
    """Read and validate a run directory; every problem is a ``UserError`` naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    config = read_json(path / "config.json")
    if config.get("format") != RUN_FORMAT:
        raise UserError(f"{path} is not a selfish-deploy run directory (config.json format "
                        f"{config.get('format')!r})")
    if config.get("format_version") != RUN_FORMAT_VERSION:
        raise UserError(f"{path}: run format version {config.get('format_version')} is not supported "
                        f"(this version reads {RUN_FORMAT_VERSION})")
    try:
        model_config = ModelConfig.from_dict(config["model"])
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}/config.json has no valid 'model' section: {e}") from None
    tensors = read_safetensors(path / "model.safetensors")
    masks = {n[len(MASK_PREFIX):]: t.bool() for n, t in tensors.items() if n.startswith(MASK_PREFIX)}
    weights = {n: t for n, t in tensors.items() if not n.startswith(MASK_PREFIX)}
    vocab = Vocabulary.load(path / "vocab.txt")
    if len(vocab) != model_config.vocab_size:
        raise UserError(f"{path}: vocab.txt has {len(vocab)} words, config says {model_config.vocab_size}")
    return Run(path, config, model_config, weights, masks, vocab)
