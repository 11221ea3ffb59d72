"""The training loop, top to bottom: data, model, masks, method, optimizer, epochs, checkpoints, test."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfish_deploy.data import batchify, get_batch, load_corpus
from selfish_deploy.errors import UserError
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.model import RNNLM, ModelConfig, repackage
from selfish_deploy.rundir import RUN_FORMAT, RUN_FORMAT_VERSION, read_json, save_weights, write_json

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .methods import get_method
from .optim import build_optimizer
from .plots import plot_validation

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available")
    return device


@torch.no_grad()
def evaluate(model: RNNLM, data: torch.Tensor, bptt: int, max_batches: int | None = None) -> float:
    """Mean next-token cross-entropy (nats) over ``data`` (T, B)."""
    model.eval()
    state = model.init_hidden(data.size(1))
    total, count = 0.0, 0
    for b, i in enumerate(range(0, data.size(0) - 1, bptt)):
        if max_batches is not None and b >= max_batches:
            break
        x, y = get_batch(data, i, bptt)
        logits, state = model(x, state)
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    return total / count


class MetricsLog:
    """Append-only ``metrics.jsonl``; truncated to the checkpoint's length on resume."""

    def __init__(self, path: Path, keep_lines: int | None = None):
        self.path = path
        lines = path.read_text().splitlines() if (path.exists() and keep_lines) else []
        self.records = [json.loads(line) for line in lines[: keep_lines or 0]]
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_val: float = math.inf


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Train per ``cfg`` into ``cfg.out``; with ``resume`` continue exactly from its checkpoint."""
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    corpus = load_corpus(cfg.corpus, cfg.data_dir)
    train_data = batchify(corpus.train, cfg.batch_size).to(device)  # (T, B)
    val_data = batchify(corpus.valid, cfg.eval_batch_size).to(device)
    test_data = batchify(corpus.test, cfg.eval_batch_size).to(device)

    model_cfg = ModelConfig(arch=cfg.arch, vocab_size=len(corpus.vocab), emb=cfg.emb, hidden=cfg.hidden,
                            layers=cfg.layers, dropout=cfg.dropout, tie_weights=cfg.tie_weights)
    model = RNNLM(model_cfg).to(device)
    method_cls = get_method(cfg.method)
    topology_rng = torch.Generator().manual_seed(cfg.seed)  # masks are drawn on the CPU: same on any device
    masks = MaskRegistry(model, 1.0 if method_cls.dense else cfg.density, cfg.distribution, topology_rng,
                         arch=cfg.arch)
    steps_per_epoch = math.ceil((train_data.size(0) - 1) / cfg.bptt)
    method = method_cls(masks, steps_per_epoch * cfg.epochs, cfg, topology_rng)
    optimizer = build_optimizer(cfg.optimizer, model, cfg, masks)
    loop = LoopState()

    out.mkdir(parents=True, exist_ok=True)
    if resume:
        ckpt = load_checkpoint(out)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(ckpt["weights"][n])
        masks.load_state_dict(ckpt["masks"])
        optimizer.load_state_dict(ckpt["optimizer"])
        method.load_state_dict(ckpt["method"])
        topology_rng.set_state(ckpt["rng"]["topology"])
        set_rng_state(ckpt["rng"], device)
        loop = LoopState(**ckpt["loop"])
        metrics = MetricsLog(out / "metrics.jsonl", keep_lines=ckpt["metrics_lines"])
        log.info("resumed %s after epoch %d (step %d)", out, loop.epoch, loop.step)
    else:
        metrics = MetricsLog(out / "metrics.jsonl")
        corpus.vocab.save(out / "vocab.txt")
    log.info("config: %s", json.dumps(cfg.to_dict()))
    log.info("model: %s, %d weights in matrices at density %.4f", model_cfg, sum(masks.target_nnz.values()),
             masks.total_density())
    run_config = {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
        "model": model_cfg.to_dict(), "train": cfg.to_dict(),
        "corpus": {"name": cfg.corpus, "source": corpus.source},
        "vocab_size": len(corpus.vocab), "density": masks.total_density(),
        "density_per_tensor": {n: masks.density(n) for n in masks},
        "results": {},
    }
    if resume and (out / "config.json").exists():
        run_config["results"] = read_json(out / "config.json").get("results", {})
    write_json(out / "config.json", run_config)

    max_batches = 1 if cfg.dry_run else None
    while loop.epoch < cfg.epochs:
        epoch = loop.epoch + 1
        model.train()
        state = model.init_hidden(cfg.batch_size)
        t0, total_loss, n_batches = time.time(), 0.0, 0
        starts = list(range(0, train_data.size(0) - 1, cfg.bptt))[: max_batches]
        bar = tqdm(starts, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False, disable=None)
        for i in bar:
            x, y = get_batch(train_data, i, cfg.bptt)
            state = repackage(state)
            model.zero_grad(set_to_none=True)
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
            loss.backward()
            method.before_step(loop.step)
            masks.mask_grads_()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            masks.apply_()
            loop.step += 1
            update = method.after_step(loop.step)
            if update is not None:
                metrics.write({"event": "topology", "epoch": epoch, "step": loop.step, **update})
            total_loss += loss.item()
            n_batches += 1
            if n_batches % cfg.log_interval == 0:
                ppl = math.exp(total_loss / n_batches)
                bar.set_postfix(ppl=f"{ppl:.1f}")
                if bar.disable:  # no terminal: progress goes to the log instead
                    log.info("epoch %d | %d/%d batches | %.0f ms/batch | train ppl %.1f", epoch, n_batches,
                             len(starts), 1000 * (time.time() - t0) / n_batches, ppl)
        train_time = time.time() - t0
        with optimizer.eval_weights():
            val_loss = evaluate(model, val_data, cfg.bptt, max_batches)
            improved = val_loss < loop.best_val
            if improved:
                loop.best_val = val_loss
                save_weights(out / "model.safetensors", model, masks.masks)
        opt_info = optimizer.on_epoch_end(val_loss)
        loop.epoch = epoch
        record = {"event": "epoch", "epoch": epoch, "step": loop.step, "train_loss": total_loss / n_batches,
                  "val_loss": val_loss, "val_ppl": math.exp(val_loss), "best_val_ppl": math.exp(loop.best_val),
                  "epoch_time_s": train_time, **opt_info,
                  "density": {n: masks.density(n) for n in masks}}
        metrics.write(record)
        log.info("epoch %d | %.0fs | train ppl %.2f | val ppl %.2f%s | lr %g", epoch, train_time,
                 math.exp(total_loss / n_batches), math.exp(val_loss), " *" if improved else "", opt_info["lr"])
        save_checkpoint(out, {
            "weights": dict(model.named_parameters()), "masks": masks.state_dict(),
            "optimizer": optimizer.state_dict(), "method": method.state_dict(),
            "rng": {**rng_state(device), "topology": topology_rng.get_state()},
            "loop": vars(loop).copy(), "metrics_lines": len(metrics.records),
        })
        plot_validation(metrics.records, out / "plots")
        if cfg.stop_after_epoch is not None and epoch >= cfg.stop_after_epoch and epoch < cfg.epochs:
            log.info("stopping after epoch %d as asked; continue with --resume %s", epoch, out)
            return run_config

    # Test the best-validation weights.
    from selfish_deploy.rundir import load_run

    best = load_run(out).build_model().to(device)
    test_loss = evaluate(best, test_data, cfg.bptt, max_batches)
    val_loss = evaluate(best, val_data, cfg.bptt, max_batches)
    results = {"val_ppl": math.exp(val_loss), "test_ppl": math.exp(test_loss), "epochs": loop.epoch,
               "steps": loop.step}
    metrics.write({"event": "test", **results})
    run_config["results"] = results
    write_json(out / "config.json", run_config)
    log.info("done: best validation ppl %.2f, test ppl %.2f -> %s", results["val_ppl"], results["test_ppl"], out)
    return run_config
