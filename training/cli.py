"""``selfish-train``: train a sparse RNN language model into a run directory."""

from __future__ import annotations

from . import allocator

allocator.keep_freed_memory()  # before torch is imported: set after it, a freed 64 MiB buffer was faulted in again

import argparse
import logging
import sys
from dataclasses import fields
from pathlib import Path

from selfish_deploy import cli
from selfish_deploy.errors import UserError
from selfish_deploy.families import DECODERS, FAMILIES, all_options, decoder_names, family_names
from selfish_deploy.rundir import read_json

from .config import TrainConfig, load_recipe, upgrade_saved
from .methods import METHODS
from .optim import OPTIMIZERS
from .stopping import TrainingStopped

log = logging.getLogger(__name__)

HELP = {
    "corpus": "corpus name: sub-directory of --data-dir, or Hub corpus (ptb, wikitext-2)",
    "data_dir": "directory with {train,valid,test}.txt (default: $SELFISH_DATA_DIR, else the Hub)",
    "arch": "recurrent trunk (the model family)",
    "layers": "number of recurrent layers",
    "hidden": "units per recurrent layer",
    "emb": "embedding width (and last layer's width when tied)",
    "dropout": "the family's main dropout (stacked cells: on embeddings, between layers and before the "
               "decoder; awd_lstm, on_lstm: on the trunk's output; rhn: after every layer; their other "
               "dropouts are options below)",
    "tie_weights": "share the embedding and decoder matrix (and mask)",
    "decoder": "head after the trunk: softmax, or mos (mixture of softmaxes)",
    "experts": "mos: number of softmaxes mixed (0 for softmax)",
    "method": "sparse-training method",
    "density": "fraction of non-zero weights over all weight matrices",
    "distribution": "how the density is spread over tensors at init",
    "death_rate": "fraction of a tensor's non-zeros removed per topology update; unset: the method's own "
                  "(selfish 0.8 for LSTM else 0.5, set 0.3, rigl 0.3, snfs 0.5, dsr 0.1 as its target)",
    "death_rate_final": "selfish/snfs: the death rate anneals by a cosine down to this",
    "update_every": "steps between topology updates inside an epoch; 0: once per epoch, after validation "
                    "and the NT-ASGD trigger (the authors' order); unset: 100 for rigl and gmp, 0 for the others",
    "regrow_exclude_dead": "selfish: never regrow a weight that died in the same update (the default, as the "
                           "authors' code, draws among all zeros, just-died included, which keep their value)",
    "stop_fraction": "rigl: no topology updates after this fraction of the training steps",
    "gmp_start": "gmp: start pruning at this fraction of the training steps",
    "gmp_end": "gmp: reach the final --density at this fraction of the training steps",
    "optimizer": "snt-asgd: SGD, then masked averaging once validation stalls (Selfish-RNN); sgd: annealed SGD",
    "lr": "initial learning rate (snt-asgd restarts at it when averaging begins)",
    "nonmono": "snt-asgd: start averaging when validation is worse than the best one before the last N epochs",
    "asgd_after": "snt-asgd: start averaging after this epoch even if not triggered (0: from the first step)",
    "asgd_restarts": "snt-asgd: when averaging already, start the averages again (lr back to --lr) after these "
                     "epochs, as ON-LSTM's main_ONLSTM.py --finetuning/--finetuning2",
    "anneal": "sgd: divide the learning rate by this when validation does not improve",
    "clip": "gradient-norm clipping",
    "clip_masked_grad": "clip the norm of the masked gradient (the default, as the authors' code, clips the "
                        "dense gradient, then steps and re-applies the masks)",
    "momentum": "SGD momentum for every method and both SNT-ASGD phases (the authors' code uses none)",
    "weight_decay": "L2 weight decay",
    "epochs": "epochs to train",
    "batch_size": "training batch size",
    "eval_batch_size": "validation batch size (and test, unless --test-batch-size)",
    "test_batch_size": "test batch size; unset: --eval-batch-size",
    "bptt": "truncated back-propagation length",
    "seed": "random seed (weights, masks, dropout)",
    "device": "cpu, cuda or cuda:N",
    "out": "run directory to write",
    "log_interval": "batches between progress-bar loss updates",
    "stop_after_epoch": "end this invocation after that epoch; continue later with --resume",
    "checkpoint_minutes": "minutes between checkpoints inside an epoch, which --resume continues from exactly "
                          "(SIGTERM and Ctrl-C also write one, at the next batch, then exit 143 / 130)",
    "dry_run": "one batch per epoch and evaluation: checks the whole path quickly",
    "max_batches": "train on at most this many batches per epoch (schedules shrink to match); "
                   "evaluation still covers the whole split",
}
CHOICES = {"method": tuple(sorted(METHODS)), "distribution": ("uniform", "erk"), "optimizer": OPTIMIZERS}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="selfish-train",
        description="Train a sparse RNN language model. Values come from defaults, then --config, then flags.",
    )
    p.add_argument("--config", metavar="TOML", help="recipe file (or the name of a bundled recipe)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly from its checkpoint "
                   "(its config is used; only --epochs, --stop-after-epoch, --checkpoint-minutes and --device may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (without it, an existing run is never touched)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    defaults = TrainConfig()
    choices = {**CHOICES, "arch": family_names(), "decoder": decoder_names()}  # the registry as it is now
    for f in fields(TrainConfig):
        if f.name == "options":  # one flag per option below
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=HELP[f.name])
            continue
        if f.type == "list[int]":
            p.add_argument(flag, type=int, nargs="+", default=None, metavar="EPOCH",
                           help=f"{HELP[f.name]} (default: none)")
            continue
        kind = {"int": int, "float": float}.get(f.type.split(" |")[0], str)
        p.add_argument(flag, type=kind, default=None, choices=choices.get(f.name),
                       help=f"{HELP[f.name]} (default: {default})")
    for opt in all_options():  # the families' and decoders' own knobs, each with its owners' defaults
        flag = "--" + opt.name.replace("_", "-")
        where = f"{opt.help} (default: {option_defaults(opt.name)})"
        if opt.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=where)
        else:
            p.add_argument(flag, type=opt.type, default=None, help=where)
    return p


def option_defaults(name: str) -> str:
    """``awd_lstm 0.4, rhn 0.65``: the default of option ``name`` in every family and decoder declaring it."""
    owners = [(f"--arch {e.name}" if e.name in FAMILIES else f"--decoder {e.name}", o.default)
              for e in (*FAMILIES.values(), *DECODERS.values()) for o in e.options if o.name == name]
    return ", ".join(f"{who} {default}" for who, default in owners)


def resolve(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    names = [f.name for f in fields(TrainConfig) if f.name != "options"] + [o.name for o in all_options()]
    flags = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces one; pass only one of them")
    if args.resume:
        run_dir = Path(args.resume)
        saved = read_json(run_dir / "config.json").get("train")
        if not isinstance(saved, dict):
            raise UserError(f"{run_dir}/config.json has no 'train' section")
        changeable = {k: v for k, v in flags.items() if k in ("epochs", "stop_after_epoch", "checkpoint_minutes", "device")}
        ignored = sorted(set(flags) - set(changeable))
        if ignored:
            log.warning("--resume uses the run's config; ignoring %s", ", ".join(ignored))
        saved = {**upgrade_saved(saved), "stop_after_epoch": None}
        return TrainConfig.from_dict({**saved, **changeable, "out": str(run_dir)}), True
    values = load_recipe(args.config) if args.config else {}
    return TrainConfig.from_dict({**TrainConfig().to_dict(), **values, **flags}), False


def body(args: argparse.Namespace) -> int:
    from .trainer import train  # heavy imports after argument checks

    cfg, resume = resolve(args)
    log.info("allocator: %s", allocator.describe())
    try:
        train(cfg, resume=resume, overwrite=args.overwrite)
    except TrainingStopped as e:  # checkpointed: a one-line message and the shell's code for the signal
        print(f"selfish-train: {e}", file=sys.stderr)
        return e.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


def entry() -> int:
    """The ``selfish-train`` command: ``main`` after restarting once with glibc's thread cache off
    (``training/allocator.py``; not in ``main``, which tests and other programs call in their own process)."""
    allocator.restart_without_thread_cache()
    return main()


if __name__ == "__main__":
    raise SystemExit(entry())
