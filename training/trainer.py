"""The training loop, top to bottom: data, model, masks, method, optimizer, epochs, checkpoints, test.

The order follows the authors' code (Selfish-RNN ``main.py``; issue 15). Per batch: backward,
``clip_grad_norm_`` over the dense gradients, optimizer step, masks re-applied (their ``train()`` and
``Masking.step``). Per epoch: validate (on the SNT-ASGD averages), keep the best weights, the optimizer's
epoch end (NT-ASGD trigger or plateau anneal), and only then the per-epoch topology update (their
``mask.at_end_of_epoch``, skipped in the epoch that switches to averaging, as theirs), then the checkpoint,
which so holds the updated topology an exact resume continues from. ``--clip-masked-grad`` and
``--update-every N`` keep our earlier order.

Under ``torchrun`` every rank runs this same loop on its own batch columns (see ``training.distributed``);
only rank 0 writes the run directory.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from selfish_deploy.data import batchify, get_batch, load_corpus
from selfish_deploy.errors import UserError
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.model import RNNLM, ModelConfig, build_model, repackage
from selfish_deploy.rundir import (RUN_FORMAT, RUN_FORMAT_VERSION, clear_run, holds_run, read_json, save_weights,
                                   write_json)

from . import distributed
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import TrainConfig
from .distributed import World
from .methods import get_method
from .optim import build_optimizer
from .plots import plot_run
from .regularization import add_ar_tar, loop_options, scaled_lr
from .stopping import StopSignals, TrainingStopped

log = logging.getLogger(__name__)

AGREE_EVERY = 10  # under torchrun, batches between the ranks' checks for a due checkpoint or a stop signal
PLOT_EVERY_S = 60.0  # the plots are redrawn after an epoch when this long has passed (and at the end): ~1 s each time


def on_cpu(obj):
    """``obj`` with its tensors (a nested hidden state) detached and on the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(on_cpu(v) for v in obj)
    return obj


def like(template, saved):
    """``saved`` (a checkpoint's lists of tensors) in the structure, device and dtype of ``template``."""
    if isinstance(template, torch.Tensor):
        return saved.to(device=template.device, dtype=template.dtype)
    return type(template)(like(t, v) for t, v in zip(template, saved, strict=True))


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available")
    return device


@torch.no_grad()
def evaluate(model: RNNLM, data: torch.Tensor, bptt: int, max_batches: int | None = None,
             world: World | None = None) -> float:
    """Mean next-token cross-entropy (nats) over ``data`` (T, B); with ``world``, over all ranks' columns."""
    model.eval()
    state = model.init_hidden(data.size(1))
    total, count = 0.0, 0
    for b, i in enumerate(range(0, data.size(0) - 1, bptt)):
        if max_batches is not None and b >= max_batches:
            break
        x, y = get_batch(data, i, bptt)
        logp, state = model(x, state)  # log-probabilities: nll_loss is cross_entropy's second half
        total += F.nll_loss(logp.view(-1, logp.size(-1)), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    if world is not None:
        total, count = distributed.all_sum([total, count], world, data.device)
    return total / count


class MetricsLog:
    """Append-only ``metrics.jsonl``; truncated to the checkpoint's length on resume. With ``write=False``
    (ranks other than 0) records are kept in memory only."""

    def __init__(self, path: Path, keep_lines: int | None = None, write: bool = True):
        self.path, self.enabled = path, write
        lines = path.read_text().splitlines() if (path.exists() and keep_lines) else []
        self.records = [json.loads(line) for line in lines[: keep_lines or 0]]
        if write:
            path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best_val: float = math.inf


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train per ``cfg`` into ``cfg.out``; with ``resume`` continue exactly from its checkpoint.

    The checkpoint is written after every epoch and, inside one, every ``cfg.checkpoint_minutes``; SIGTERM or
    Ctrl-C write one at the next batch boundary, then raise ``TrainingStopped``.

    A directory that already holds a run is only replaced with ``overwrite``: a repeated command must not
    erase hours of training."""
    if not (resume or overwrite) and holds_run(Path(cfg.out)):
        raise UserError(f"{cfg.out} already holds a run; continue it with --resume {cfg.out}, replace it with "
                        "--overwrite, or pass another --out")
    world, device = distributed.setup(resolve_device(cfg.device))
    try:
        return run(cfg, resume, world, device)
    finally:
        distributed.teardown(world)


def run(cfg: TrainConfig, resume: bool, world: World, device: torch.device) -> dict:
    return Trainer(cfg, resume, world, device).run()


class Trainer:
    """One run: everything the loop needs, built from ``cfg`` (and restored from the checkpoint with
    ``resume``); ``run()`` trains the remaining epochs and tests."""

    def __init__(self, cfg: TrainConfig, resume: bool, world: World, device: torch.device):
        self.cfg, self.world, self.device = cfg, world, device
        self.out, self.main = Path(cfg.out), world.is_main
        torch.manual_seed(cfg.seed)
        corpus = load_corpus(cfg.corpus, cfg.data_dir)
        # This rank's batch columns; evaluation columns are split too when they divide evenly.
        train_data = batchify(corpus.train, cfg.batch_size)[:, distributed.columns(cfg.batch_size, world)]
        self.train_data = train_data.contiguous().to(device)  # (T, B / world)
        self.val_data, self.val_world = eval_split(corpus.valid, cfg.eval_batch_size, world, device)
        self.test_data, self.test_world = eval_split(corpus.test, cfg.test_batch_size or cfg.eval_batch_size, world,
                                                     device)

        self.model_cfg = ModelConfig(arch=cfg.arch, vocab_size=len(corpus.vocab), emb=cfg.emb, hidden=cfg.hidden,
                                     layers=cfg.layers, dropout=cfg.dropout, tie_weights=cfg.tie_weights,
                                     decoder=cfg.decoder, experts=cfg.experts, options=cfg.options)
        self.model = model = build_model(self.model_cfg).to(device)
        distributed.broadcast_parameters(list(model.parameters()), world)  # same start everywhere
        method_cls = get_method(cfg.method)
        self.topology_rng = torch.Generator().manual_seed(cfg.seed)  # masks are drawn on the CPU: same on any device
        start_density = 1.0 if (method_cls.dense or getattr(method_cls, "initial_density_one", False)) else cfg.density
        # the family's sparse tensors
        self.masks = MaskRegistry(model, start_density, cfg.distribution, self.topology_rng)
        self.starts = list(range(0, self.train_data.size(0) - 1, cfg.bptt))[: 1 if cfg.dry_run else cfg.max_batches]
        self.method = method_cls(self.masks, len(self.starts) * cfg.epochs, cfg, self.topology_rng)
        # --momentum for every method alike (SNFS's growth signal is its own gradient mean)
        self.optimizer = build_optimizer(cfg.optimizer, model, cfg, None if method_cls.dense else self.masks.masks)
        self.loop = LoopState()
        # AWD-LSTM's AR/TAR and variable-length BPTT when the family asks (training/regularization.py); the
        # stacked cells ask for neither, so their windows, loss and steps are what they always were.
        self.knobs = loop_options(self.model_cfg)
        self.windows_rng = self.knobs.windows(cfg.bptt, cfg.seed)
        if world.enabled:
            torch.manual_seed(cfg.seed + world.rank)  # dropout differs per rank; weights and masks do not

        if self.main:
            if not resume:
                clear_run(self.out)  # what an --overwrite replaces goes first, its checkpoint above all
            self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.partial = self._restore()  # the epoch in progress when written inside one, else None
        else:
            self._start(corpus)
            self.partial = None
        log.info("config: %s", json.dumps(cfg.to_dict()))
        log.info("model: %s, %d non-zero weights in its matrices (density %.4f); %d process(es)", self.model_cfg,
                 sum(self.masks.target_nnz.values()), self.masks.total_density(), world.size)
        self.run_config = {
            "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION,
            "model": self.model_cfg.to_dict(), "train": cfg.to_dict(),
            "corpus": {"name": cfg.corpus, "source": corpus.source},
            "vocab_size": len(corpus.vocab), "density": self.masks.total_density(),
            "density_per_tensor": {n: self.masks.density(n) for n in self.masks},
            "results": {},
        }
        if resume and (self.out / "config.json").exists():
            self.run_config["results"] = read_json(self.out / "config.json").get("results", {})
        if self.main:
            write_json(self.out / "config.json", self.run_config)

        self.params = list(model.parameters())
        self.sparse = not method_cls.dense
        self.max_batches = 1 if cfg.dry_run else None  # per evaluation
        self.last_plot = -math.inf  # the first epoch's plots are drawn at once
        self.last_save, self.every_s = time.monotonic(), 60.0 * (cfg.checkpoint_minutes or math.inf)

    def _start(self, corpus) -> None:
        """A new run: its vocabulary and the metrics log's first record."""
        self.metrics = MetricsLog(self.out / "metrics.jsonl", write=self.main)
        if self.main:
            corpus.vocab.save(self.out / "vocab.txt")
        self.metrics.write({"event": "start", "epoch": 0, "step": 0, "world_size": self.world.size,
                            "density": {n: self.masks.density(n) for n in self.masks},
                            "gates": gate_report(self.masks)})

    def _restore(self) -> dict | None:
        """Everything from the checkpoint; returns the epoch in progress (``partial``) when it was written inside
        one."""
        out, world = self.out, self.world
        ckpt = load_checkpoint(out)
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                p.copy_(ckpt["weights"][n])
        self.masks.load_state_dict(ckpt["masks"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.method.load_state_dict(ckpt["method"])
        self.topology_rng.set_state(ckpt["rng"]["topology"])
        if self.windows_rng is not None:
            self.windows_rng.load_state_dict(ckpt["rng"]["bptt"])
        ranks = ckpt["rng"].get("ranks") or [ckpt["rng"]]
        if len(ranks) != world.size:
            log.warning("checkpoint was written by %d process(es), resuming with %d: dropout draws will differ",
                        len(ranks), world.size)
        set_rng_state(ranks[world.rank] if world.rank < len(ranks) else ranks[0], self.device)
        self.loop = LoopState(**ckpt["loop"])
        partial = ckpt.get("partial")  # written inside an epoch: the rest of that epoch comes first
        if partial is not None and len(partial["ranks"]) != world.size:
            raise UserError(f"{out}'s checkpoint was written inside epoch {self.loop.epoch + 1} by "
                            f"{len(partial['ranks'])} process(es): resume it with as many (each carries its "
                            f"own batch columns' hidden state)")
        self.metrics = MetricsLog(out / "metrics.jsonl", keep_lines=ckpt["metrics_lines"], write=self.main)
        log.info("resumed %s after epoch %d%s (step %d)", out, self.loop.epoch,
                 "" if partial is None else f" and batch {partial['batches']}/{len(partial['windows'])} of the next",
                 self.loop.step)
        return partial

    def _topology_changed(self, update: dict, epoch: int) -> None:
        if self.world.enabled:  # rank 0 decides (ranks agree anyway; this rules out broken ties)
            distributed.broadcast_masks(self.masks.masks, self.world)
            self.masks.apply_()
        self.masks.mask_momentum_(self.optimizer)  # a regrown weight starts at rest, not with a stale push
        self.metrics.write({"event": "topology", "epoch": epoch, "step": self.loop.step,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "phase": getattr(self.optimizer, "phase", "sgd"), **update})

    def _save(self, partial: dict | None = None) -> None:
        """The checkpoint (collective: every rank calls it); ``partial``: the epoch so far, inside one."""
        world = self.world
        rank_rng = distributed.gather_objects(rng_state(self.device), world)
        if partial is not None:  # each rank's own: its batch columns' hidden state and its loss so far
            partial = {**partial, "ranks": distributed.gather_objects(on_cpu(partial["ranks"]), world)}
        if self.main:
            save_checkpoint(self.out, {
                "weights": dict(self.model.named_parameters()), "masks": self.masks.state_dict(),
                "optimizer": self.optimizer.state_dict(), "method": self.method.state_dict(),
                "rng": {"topology": self.topology_rng.get_state(),
                        **({"bptt": self.windows_rng.state_dict()} if self.windows_rng is not None else {}),
                        **({"ranks": rank_rng} if world.enabled else rank_rng[0])},
                "loop": vars(self.loop).copy(), "metrics_lines": len(self.metrics.records),
                **({"partial": partial} if partial is not None else {}),
            })
        self.last_save = time.monotonic()

    def _on_any_rank(self, *flags: bool) -> list[bool]:
        """Each flag, true if true on any rank: every rank then takes the collective checkpoint together."""
        return [v > 0 for v in distributed.all_sum([float(f) for f in flags], self.world, self.device)]

    def run(self) -> dict:
        """The remaining epochs, then the test of the best-validation weights; the run's ``config.json``."""
        with StopSignals() as stop:
            while self.loop.epoch < self.cfg.epochs:
                epoch = self.loop.epoch + 1
                if self._end_epoch(epoch, *self._train_epoch(epoch, stop), stop):
                    return self.run_config
        return self._test()

    def _train_epoch(self, epoch: int, stop: StopSignals) -> tuple[float, float, list[float]]:
        """The epoch's batches (the rest of them, resumed inside it): (seconds, mean training loss over every
        rank, per-step seconds). A due checkpoint or a stop signal is taken at a batch boundary."""
        cfg, model, masks, method, optimizer, loop = (self.cfg, self.model, self.masks, self.method, self.optimizer,
                                                      self.loop)
        world, params, sparse, knobs, windows_rng = self.world, self.params, self.sparse, self.knobs, self.windows_rng
        model.train()
        if self.partial is None:
            state = model.init_hidden(self.train_data.size(1))
            t0, total_loss, n_batches, step_times = time.time(), 0.0, 0, []
            windows = ([(i, cfg.bptt) for i in self.starts] if windows_rng is None else  # (start, length)
                       windows_rng.windows(self.train_data.size(0))[: 1 if cfg.dry_run else cfg.max_batches])
            epoch_start = loop.step
        else:  # resumed inside this epoch: its windows, carried state and sums so far
            partial, self.partial = self.partial, None
            windows = [tuple(w) for w in partial["windows"]]
            mine = partial["ranks"][world.rank]
            state = like(model.init_hidden(self.train_data.size(1)), mine["hidden"])
            total_loss, n_batches, step_times = mine["loss_sum"], partial["batches"], mine["step_times"]
            t0, epoch_start = time.time() - partial["train_time_s"], partial["epoch_start_step"]
        method.begin_epoch(epoch_start + len(windows), last=epoch == cfg.epochs)
        bar = tqdm(windows[n_batches:], initial=n_batches, total=len(windows), desc=f"epoch {epoch}/{cfg.epochs}",
                   unit="batch", leave=False, disable=None if self.main else True)
        for i, seq_len in bar:
            t_step = time.perf_counter()
            x, y = get_batch(self.train_data, i, seq_len)
            state = repackage(state)
            model.zero_grad(set_to_none=True)
            logp, state = model(x, state)
            loss = F.nll_loss(logp.view(-1, logp.size(-1)), y.reshape(-1))  # = cross_entropy of the logits
            add_ar_tar(loss, model, knobs.alpha, knobs.beta).backward()  # + AR/TAR if asked; `loss` is logged
            distributed.average_gradients(params, world)  # before the method reads gradients
            if cfg.clip_masked_grad:  # ours before issue 15: the norm of the masked gradient
                method.before_step(loop.step)
                if sparse:
                    masks.mask_grads_()
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            else:  # main.py train(): clip_grad_norm_ over every (dense) gradient, then mask.step()
                torch.nn.utils.clip_grad_norm_(params, cfg.clip)
                method.before_step(loop.step)  # the gradient the step uses (theirs reads it after the clip)
                if sparse:  # same step as theirs, whose apply_mask zeroes dead weights and momentum after it;
                    masks.mask_grads_()  # a dense method's masks are all ones: nothing to zero
            if windows_rng is None:
                optimizer.step()
            else:  # main.py train(): lr * seq_len / bptt for this step
                with scaled_lr(optimizer, seq_len, cfg.bptt):
                    optimizer.step()
            if sparse:
                masks.apply_()
            loop.step += 1
            update = method.after_step(loop.step)  # --update-every N only
            if update is not None:
                self._topology_changed(update, epoch)
            total_loss += loss.item()
            n_batches += 1
            step_times.append(time.perf_counter() - t_step)
            if n_batches % cfg.log_interval == 0:
                ppl = math.exp(total_loss / n_batches)
                bar.set_postfix(ppl=f"{ppl:.1f}")
                if bar.disable and self.main:  # no terminal: progress goes to the log instead
                    log.info("epoch %d | %d/%d batches | %.0f ms/batch | train ppl %.1f", epoch, n_batches,
                             len(windows), 1000 * (time.time() - t0) / n_batches, ppl)
            if n_batches == len(windows):
                break  # the epoch's own checkpoint comes after validation
            due = stopping = False
            if not world.enabled or n_batches % AGREE_EVERY == 0:  # ranks agree: a collective, so not every batch
                due, stopping = self._on_any_rank(time.monotonic() - self.last_save >= self.every_s,
                                                  stop.requested is not None)
            if due or stopping:
                self._save({"windows": [list(w) for w in windows], "batches": n_batches,
                            "train_time_s": time.time() - t0, "epoch_start_step": epoch_start,
                            "ranks": {"hidden": state, "loss_sum": total_loss, "step_times": step_times}})
                log.info("checkpoint in epoch %d after batch %d/%d", epoch, n_batches, len(windows))
            if stopping:
                raise TrainingStopped(stop.requested or signal.SIGTERM,
                                      f"in epoch {epoch} after batch {n_batches}/{len(windows)}; continue with "
                                      f"--resume {self.out}")
        train_time = time.time() - t0
        total_loss, n_seen = distributed.all_sum([total_loss, n_batches], world, self.device)
        return train_time, total_loss / n_seen, step_times

    def _end_epoch(self, epoch: int, train_time: float, train_loss: float, step_times: list[float],
                   stop: StopSignals) -> bool:
        """Validation, the best weights, the optimizer's epoch end, the topology update, the checkpoint, the
        plots; True when the run stops here as asked (``stop_after_epoch``)."""
        cfg, masks, optimizer, loop, metrics, out = (self.cfg, self.masks, self.optimizer, self.loop, self.metrics,
                                                     self.out)
        with optimizer.eval_weights():  # SNT-ASGD: the masked averages
            val_loss = evaluate(self.model, self.val_data, cfg.bptt, self.max_batches, self.val_world)
            improved = val_loss < loop.best_val
            if improved:
                loop.best_val = val_loss
                if self.main:
                    save_weights(out / "model.safetensors", self.model, masks.masks)
        opt_info = optimizer.on_epoch_end(val_loss, epoch)
        switch, restart = opt_info.pop("switch", None), opt_info.pop("restart", False)
        loop.epoch = epoch
        metrics.write({"event": "epoch", "epoch": epoch, "step": loop.step, "train_loss": train_loss,
                       "val_loss": val_loss, "val_ppl": math.exp(val_loss), "best_val_ppl": math.exp(loop.best_val),
                       "epoch_time_s": train_time, "step_time_s": statistics.median(step_times), **opt_info,
                       "density": {n: masks.density(n) for n in masks}, "gates": gate_report(masks)})
        log.info("epoch %d | %.0fs | train ppl %.2f | val ppl %.2f%s | lr %g | %s", epoch, train_time,
                 math.exp(train_loss), math.exp(val_loss), " *" if improved else "", opt_info["lr"],
                 opt_info["phase"])
        reason = switch or ("restart" if restart else None)
        if reason:  # averaging begins (trigger, asgd_after) or, with --asgd-restarts, starts again
            lr = optimizer.param_groups[0]["lr"]
            metrics.write({"event": "phase", "epoch": epoch, "step": loop.step, "phase": optimizer.phase,
                           "reason": reason, "lr": lr})
            log.info("masked averaging (SNT-ASGD) %s after epoch %d (%s) at lr %g",
                     "starts again" if restart else "begins", epoch, reason, lr)
        # The per-epoch topology update comes after validation, the best checkpoint and the trigger (main.py:
        # mask.at_end_of_epoch last; not in the epoch that switches to Sparse_ASGD, whose branch is skipped; in a
        # restart epoch it still runs, as main_ONLSTM.py's at_end_of_epoch comes before its new Sparse_ASGD).
        update = None if switch else self.method.at_epoch_end(loop.step)
        if update is not None:
            self._topology_changed(update, epoch)
        if self.world.enabled:
            digests = distributed.check_in_sync({
                **dict(self.model.named_parameters()), **{"mask." + n: m for n, m in masks.masks.items()},
                **{"eval." + n: t for n, t in optimizer_weights(optimizer, self.model).items()}},
                self.world, f"after epoch {epoch}")
            metrics.write({"event": "sync", "epoch": epoch, "step": loop.step, "world_size": self.world.size,
                           "digests": digests})
        stopping = cfg.stop_after_epoch is not None and cfg.stop_after_epoch <= epoch < cfg.epochs
        self._save()
        (signalled,) = self._on_any_rank(stop.requested is not None)
        if self.main and (stopping or signalled or time.monotonic() - self.last_plot >= PLOT_EVERY_S):
            plot_run(metrics.records, out / "plots", self.model_cfg)  # the last epoch's come after the test
            self.last_plot = time.monotonic()
        if signalled and epoch < cfg.epochs:
            raise TrainingStopped(stop.requested or signal.SIGTERM, f"after epoch {epoch}; continue with "
                                  f"--resume {out}")
        if stopping:
            log.info("stopping after epoch %d as asked; continue with --resume %s", epoch, out)
        return stopping

    def _test(self) -> dict:
        """Test (and validate again) the best-validation weights, the file rank 0 wrote."""
        from selfish_deploy.rundir import load_run

        cfg, out = self.cfg, self.out
        distributed.barrier(self.world)
        best = load_run(out).build_model().to(self.device)
        test_loss = evaluate(best, self.test_data, cfg.bptt, self.max_batches, self.test_world)
        val_loss = evaluate(best, self.val_data, cfg.bptt, self.max_batches, self.val_world)
        results = {"val_ppl": math.exp(val_loss), "test_ppl": math.exp(test_loss), "epochs": self.loop.epoch,
                   "steps": self.loop.step}
        self.metrics.write({"event": "test", **results})
        self.run_config["results"] = results
        if self.main:
            write_json(out / "config.json", self.run_config)
            plot_run(self.metrics.records, out / "plots", self.model_cfg)
        log.info("done: best validation ppl %.2f, test ppl %.2f -> %s", results["val_ppl"], results["test_ppl"], out)
        return self.run_config


def eval_split(tokens: torch.Tensor, batch_size: int, world: World,
               device: torch.device) -> tuple[torch.Tensor, World | None]:
    """``tokens`` batchified for evaluation (T, B), this rank's columns when ``batch_size`` splits evenly over
    the ranks (then the world to sum over), else all of them on every rank (and no world)."""
    shard = world.enabled and batch_size % world.size == 0
    cols = distributed.columns(batch_size, world) if shard else slice(None)
    return batchify(tokens, batch_size)[:, cols].contiguous().to(device), (world if shard else None)


def gate_report(masks: MaskRegistry) -> dict[str, list[float]]:
    """Per-gate densities of the trunk's matrices (for the gate-density plot)."""
    return {n: masks.gate_densities(n) for n in masks.trunk_names()}


def optimizer_weights(optimizer, model: RNNLM) -> dict[str, torch.Tensor]:
    """The weights ``eval_weights`` would swap in (SNT-ASGD's averages), copied out."""
    with optimizer.eval_weights():
        return {n: p.detach().clone() for n, p in model.named_parameters()}
