"""Benchmark: every sparse-training method with plain SGD and with SNT-ASGD on one recipe.

Trains each (method, optimizer) pair for the same number of epochs from the same recipe (default
``ptb-cpu``: 2x200 tied LSTM, density 0.33), then prints and appends to ``benchmarks/RESULTS.md`` a table
of best validation and test perplexity and training time per epoch, with the time relative to the dense
model under the same optimizer (the cost of mask updates and masked averaging; target: at most +5%).

Time is training only (evaluation excluded), as the mean epoch time and as the median step time (robust
to other jobs on a shared machine; it leaves out rare topology updates, which the mean includes).

The full run is hours on a CPU (about 13 core-hours for the ``ptb-cpu`` recipe). It is restartable: run the
same command again and finished runs are read back from ``--out`` while unfinished ones resume from their
last epoch checkpoint; ``--methods``/``--optimizers`` split it over several processes. Reduce it with
``--epochs``, ``--max-batches`` (training batches per epoch; the methods' schedules shrink to match),
``--eval-lines`` (first lines of the validation and test files; for PTB the vocabulary and word ids stay
those of the full corpus, as training text defines them) and ``--methods``. A reduced run ends in the
trigger-free SGD phase, so pass ``--asgd-after 0`` to measure averaging from the first step. Example (what
RESULTS.md records as a reduced run)::

    nice -n 10 python benchmarks/train_methods.py --epochs 1 --max-batches 150 --eval-lines 400 \\
        --methods dense,static,selfish --asgd-after 0
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import machine, median_ms

REPO = Path(__file__).resolve().parents[1]
ALL_METHODS = ("dense", "static", "set", "rigl", "gmp", "selfish")

log = logging.getLogger("benchmarks.train_methods")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--recipe", default="ptb-cpu", help="bundled recipe name or TOML path")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="corpus directory")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated methods")
    p.add_argument("--optimizers", default="sgd,snt-asgd", help="comma-separated optimizers")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the recipe's)")
    p.add_argument("--max-batches", type=int, default=None, help="training batches per epoch (default: all)")
    p.add_argument("--eval-lines", type=int, default=None, help="first lines of valid/test (default: all)")
    p.add_argument("--asgd-after", type=int, default=None, help="snt-asgd: average after this epoch at the latest")
    p.add_argument("--overhead-reps", type=int, default=20,
                   help="repetitions of the per-step overhead timing (0: skip it)")
    p.add_argument("--overhead-only", action="store_true",
                   help="only time the per-step overhead (seconds, not hours; no training runs)")
    p.add_argument("--status", action="store_true",
                   help="print how far each run in --out has got (epochs, best validation, test), plot "
                        "its validation curves to OUT/val_ppl.png, and exit")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-methods"), help="where the runs go")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"), help="markdown to append to")
    p.add_argument("--note", default="", help="free text for the results section (e.g. 'reduced run')")
    p.add_argument("--dry-run", action="store_true",
                   help="one batch per epoch and evaluation, in a temporary directory (--out is not touched), "
                        "nothing appended")
    return p.parse_args(argv)


def eval_subset(data_dir: str, corpus: str, lines: int, tmp: Path) -> str:
    """A copy of the corpus with the full training text and the first ``lines`` of valid and test."""
    from selfish_deploy.data import find_split_files

    files = find_split_files(Path(data_dir), corpus)
    if files is None:
        sys.exit(f"no {corpus} corpus in {data_dir}")
    d = tmp / corpus
    d.mkdir(parents=True)
    (d / "train.txt").symlink_to(files["train"].resolve())
    for split in ("valid", "test"):
        text = files[split].read_text(encoding="utf-8").split("\n")[:lines]
        (d / f"{split}.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    return str(tmp)


def run_one(base: dict, method: str, optimizer: str, args, data_dir: str, root: Path) -> dict:
    from safetensors.torch import load_file

    from selfish_deploy.training.config import TrainConfig
    from selfish_deploy.training.trainer import train

    out = root / f"{method}-{optimizer}"
    cfg = TrainConfig.from_dict({**base, "method": method, "optimizer": optimizer, "data_dir": data_dir,
                                 "out": str(out), "dry_run": args.dry_run, "log_interval": 10**9,
                                 **({"epochs": args.epochs} if args.epochs else {}),
                                 **({"max_batches": args.max_batches} if args.max_batches else {}),
                                 **({"asgd_after": args.asgd_after} if args.asgd_after is not None else {})})
    t0 = time.time()
    results = previous_results(out, cfg)
    if results is None:
        resume = (out / "checkpoint" / "state.json").exists()
        if resume:
            log.info("resuming %s from its checkpoint", out)
        # Not resumable (stopped before its first checkpoint) but of this exact configuration: start over.
        results = train(cfg, resume=resume, overwrite=not resume)["results"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    saved = load_file(str(out / "model.safetensors"))
    masks = {k.removeprefix("mask."): t for k, t in saved.items() if k.startswith("mask.")}
    sizes = {k: m.numel() for k, m in masks.items()}
    density = sum(int(m.sum()) for m in masks.values()) / sum(sizes.values())
    return {"method": method, "optimizer": optimizer, "epochs": len(epochs), "steps": epochs[-1]["step"],
            "density": density, "train_density": mean_training_density(records, sizes),
            "val_ppl": results["val_ppl"], "test_ppl": results["test_ppl"],
            "epoch_s": statistics.mean(r["epoch_time_s"] for r in epochs),
            "step_ms": 1000 * statistics.median(r["step_time_s"] for r in epochs),
            "phases": sorted({r["phase"] for r in epochs}),
            "updates": sum(r["event"] == "topology" for r in records), "wall_s": time.time() - t0}


def mean_training_density(records: list[dict], sizes: dict[str, int]) -> float:
    """Fraction of the sparsifiable weights alive during training, averaged over steps.

    Sparse-to-sparse methods hold the final density throughout; GMP starts dense and prunes, so it spends
    more parameters (and, with sparse kernels, compute) for the same final density. Each topology or epoch
    record gives the density from its step until the next record's."""
    total_size = sum(sizes.values())
    points = sorted((r["step"], sum(d * sizes[k] for k, d in r["density"].items()) / total_size)
                    for r in records if r["event"] in ("topology", "epoch"))
    if not points:
        return float("nan")
    last_step = points[-1][0]
    area = points[0][0] * points[0][1]  # before the first record: its density (nothing changed before it)
    area += sum((s1 - s0) * d0 for (s0, d0), (s1, _) in zip(points, points[1:]))
    return area / last_step if last_step else points[0][1]


# Fields that may differ between invocations of one benchmark run without changing what it trains.
_NOT_RECIPE = {"out", "data_dir", "log_interval", "stop_after_epoch", "device"}


def previous_results(out: Path, cfg) -> dict | None:
    """Results of a finished run of this exact configuration in ``out`` (the benchmark takes many hours on
    a CPU, so it is restartable: finished runs are read back, unfinished ones resume from their checkpoint).
    A run directory from another configuration is an error, never silently reused or overwritten."""
    path = out / "config.json"
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    # dense training forces density 1.0, so a dense run's nominal density (the recipe's, or the CLI's
    # --density 1.0) is not a difference in what was trained
    ignore = _NOT_RECIPE | ({"density"} if cfg.method == "dense" else set())
    want = {k: v for k, v in cfg.to_dict().items() if k not in ignore}
    have = {k: v for k, v in stored.get("train", {}).items() if k not in ignore}
    if have != want:
        diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        sys.exit(f"{out} holds a run with other settings ({', '.join(diff)}); pass another --out")
    results = stored.get("results") or {}
    if results.get("test_ppl") is None:
        return None
    log.info("reusing the finished run in %s", out)
    return results


def status(out: Path, methods: list[str], optimizers: list[str]) -> str:
    """Progress of a (possibly still running) benchmark, read from its run directories."""
    lines = ["| run | epochs done / planned | phase | best val ppl | test ppl | mean epoch (s) |",
             "|---|---:|---|---:|---:|---:|"]
    for optimizer in optimizers:
        for method in methods:
            d = out / f"{method}-{optimizer}"
            if not (d / "metrics.jsonl").exists():
                lines.append(f"| {d.name} | not started | | | | |")
                continue
            planned = json.loads((d / "config.json").read_text())["train"]["epochs"]
            records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            epochs = [r for r in records if r["event"] == "epoch"]
            test = next((r["test_ppl"] for r in records if r["event"] == "test"), None)
            best = min((r["val_ppl"] for r in epochs), default=float("nan"))
            mean_s = statistics.mean(r["epoch_time_s"] for r in epochs) if epochs else float("nan")
            lines.append(f"| {d.name} | {len(epochs)} / {planned} | {epochs[-1]['phase'] if epochs else ''} | "
                         f"{best:.2f} | {'' if test is None else f'{test:.2f}'} | {mean_s:.0f} |")
    return "\n".join(lines)


def plot_curves(out: Path, methods: list[str], optimizers: list[str], path: Path) -> Path:
    """Validation perplexity per epoch of every run in ``out``, one panel per optimizer (also mid-run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, ScalarFormatter

    fig, axes = plt.subplots(1, len(optimizers), figsize=(6 * len(optimizers), 4.5), sharey=True, squeeze=False)
    for ax, optimizer in zip(axes[0], optimizers):
        for method in methods:
            metrics = out / f"{method}-{optimizer}" / "metrics.jsonl"
            if not metrics.exists():
                continue
            epochs = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["event"] == "epoch"]
            ax.plot([r["epoch"] for r in epochs], [r["val_ppl"] for r in epochs], marker=".", label=method)
        ax.set(title=optimizer, xlabel="epoch", yscale="log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.25, 1.5, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("validation perplexity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overhead(base: dict, methods: list[str], reps: int, vocab_size: int = 10000) -> list[dict]:
    """Per-step cost of each piece a sparse method adds to a dense step, timed in one process back to back
    (steadier than comparing whole runs on a shared machine): masking gradients and weights, the method's
    ``before_step``, a topology update (spread over the steps between updates), and SNT-ASGD's averaging
    over plain SGD. Compute itself is dense in every method (masked dense matrices)."""
    import torch.nn.functional as F

    from selfish_deploy.masks import MaskRegistry
    from selfish_deploy.model import RNNLM, ModelConfig
    from selfish_deploy.training.config import TrainConfig
    from selfish_deploy.training.methods import get_method
    from selfish_deploy.training.optim import MOMENTUM, AnnealedSGD, SNTASGD

    cfg = TrainConfig.from_dict({**base, "epochs": 10})
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab_size, (cfg.bptt + 1, cfg.batch_size), generator=gen)

    def fresh():
        torch.manual_seed(0)
        return RNNLM(ModelConfig(arch=cfg.arch, vocab_size=vocab_size, emb=cfg.emb, hidden=cfg.hidden,
                                 layers=cfg.layers, dropout=cfg.dropout, tie_weights=cfg.tie_weights))

    def fwd_bwd(model):
        model.zero_grad(set_to_none=True)
        logits, _ = model(x[:-1], model.init_hidden(cfg.batch_size))
        F.cross_entropy(logits.view(-1, vocab_size), x[1:].reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)

    model = fresh()
    sgd = AnnealedSGD(model.parameters(), lr=1e-6, anneal=1.0)
    dense_ms = median_ms(lambda: (fwd_bwd(model), sgd.step()), reps)
    rows = []
    for name in methods:
        cls = get_method(name)
        if cls.dense:
            continue
        model = fresh()
        masks = MaskRegistry(model, 1.0 if getattr(cls, "initial_density_one", False) else cfg.density,
                             cfg.distribution, torch.Generator().manual_seed(1), arch=cfg.arch)
        steps_per_epoch = 1000
        method = cls(masks, steps_per_epoch * cfg.epochs, cfg, torch.Generator().manual_seed(2))
        every = method.update_every
        fwd_bwd(model)
        mask_ms = median_ms(lambda: (masks.mask_grads_(), masks.apply_()), reps)
        before_ms = median_ms(lambda: method.before_step(0), reps)  # a step with no update after it
        update_step = every * max(1, int(0.2 * cfg.epochs * steps_per_epoch / every))  # early: GMP prunes
        update_ms = median_ms(lambda: (method.before_step(update_step - 1), method.update(update_step)),
                               max(3, reps // 4))
        momentum = MOMENTUM if getattr(cls, "needs_momentum", False) else 0.0
        plain = AnnealedSGD(model.parameters(), lr=1e-6, anneal=1.0, momentum=momentum)
        sgd_ms = median_ms(plain.step, reps)
        asgd = SNTASGD(dict(model.named_parameters()), masks.masks, lr=1e-6, momentum=momentum, asgd_after=0)
        asgd_ms = median_ms(asgd.step, reps)
        added = mask_ms + before_ms + update_ms / every
        rows.append({"method": name, "dense_step_ms": dense_ms, "mask_ms": mask_ms, "before_step_ms": before_ms,
                     "update_ms": update_ms, "update_every": every, "averaging_ms": asgd_ms - sgd_ms,
                     "sgd_overhead": added / dense_ms, "asgd_overhead": (added + asgd_ms - sgd_ms) / dense_ms})
    return rows


def overhead_table(rows: list[dict]) -> str:
    lines = ["| method | masking (ms) | before_step (ms) | topology update (ms) | every N steps "
             "| SNT-ASGD averaging (ms) | overhead with sgd | with snt-asgd |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['mask_ms']:.2f} | {r['before_step_ms']:.2f} | {r['update_ms']:.1f} "
                     f"| {r['update_every']} | {r['averaging_ms']:.2f} | {100 * r['sgd_overhead']:+.1f}% "
                     f"| {100 * r['asgd_overhead']:+.1f}% |")
    if rows:
        lines.append(f"\nDense step (forward, backward, clip, SGD step): {rows[0]['dense_step_ms']:.1f} ms (median).")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    dense = {r["optimizer"]: r for r in rows if r["method"] == "dense"}
    lines = ["| method | optimizer | phases | topology updates | density | mean density in training | val ppl "
             "| test ppl | epoch (s) | vs dense | median step (ms) | vs dense |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = dense.get(r["optimizer"])
        rel = lambda k: f"{100 * (r[k] / d[k] - 1):+.1f}%" if d and r is not d else "-"  # noqa: E731
        lines.append(f"| {r['method']} | {r['optimizer']} | {'+'.join(r['phases'])} | {r['updates']} "
                     f"| {r['density']:.3f} | {r['train_density']:.3f} | {r['val_ppl']:.1f} | {r['test_ppl']:.1f} "
                     f"| {r['epoch_s']:.1f} | {rel('epoch_s')} "
                     f"| {r['step_ms']:.1f} | {rel('step_ms')} |")
    return "\n".join(lines)


def append_section(results: Path, section: str) -> None:
    """Add ``section`` at the end of the "Training methods" part of ``results`` (created if missing)."""
    text = results.read_text(encoding="utf-8") if results.exists() else "# Benchmark results\n"
    heading = "\n## Training methods\n"
    if heading not in text:
        text = text.rstrip("\n") + "\n" + heading + ("\nFrom `benchmarks/train_methods.py`. Times are training "
                                                  "only; \"vs dense\" compares with the dense model under the "
                                                  "same optimizer.\n")
    start = text.index(heading) + len(heading)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end
    text = text[:end].rstrip("\n") + "\n" + section + text[end:]
    results.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    from selfish_deploy.training.config import TrainConfig, load_recipe

    base = {**TrainConfig().to_dict(), **load_recipe(args.recipe)}
    methods = [m for m in args.methods.split(",") if m]
    optimizers = [o for o in args.optimizers.split(",") if o]
    if args.status:
        print(status(Path(args.out), methods, optimizers))
        log.info("wrote %s", plot_curves(Path(args.out), methods, optimizers, Path(args.out) / "val_ppl.png"))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = eval_subset(args.data_dir, base["corpus"], args.eval_lines, Path(tmp)) if args.eval_lines \
            else args.data_dir
        for optimizer in ([] if args.overhead_only else optimizers):
            for method in methods:
                log.info("=== %s / %s ===", method, optimizer)
                root = Path(tmp) / "runs" if args.dry_run else Path(args.out)  # a dry run never touches --out
                rows.append(run_one(base, method, optimizer, args, data_dir, root))
                log.info("%s", rows[-1])
    text = table(rows) if rows else ""
    if args.overhead_reps > 0:
        log.info("timing the per-step overhead of each method (%d repetitions)", args.overhead_reps)
        text += ("\n\nPer-step overhead over a dense step, timed back to back in one process "
                 "(topology updates spread over the steps between them):\n\n"
                 + overhead_table(overhead(base, methods, args.overhead_reps)))
    print(text)
    if args.dry_run:
        return 0
    base_cfg = TrainConfig.from_dict(base)
    runs = (f"{rows[0]['epochs']} epoch(s) of {args.max_batches or 'all'} batches, " if rows
            else "per-step overhead only, ")
    scope = (f"recipe `{args.recipe}` ({base_cfg.layers}x{base_cfg.hidden} {base_cfg.arch}, tied={base_cfg.tie_weights}, "
             f"density {base_cfg.density}, lr {base_cfg.lr}), corpus {base_cfg.corpus}, {runs}"
             f"validation/test: {f'first {args.eval_lines} lines' if args.eval_lines else 'full'}, "
             f"asgd_after={args.asgd_after if args.asgd_after is not None else base_cfg.asgd_after}, "
             f"{args.threads} thread(s)")
    section = (f"\n### {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}\n\n{scope}."
               f"{' ' + args.note if args.note else ''}\n\n"
               f"Command: `python benchmarks/train_methods.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
               f"\n\n{text}\n")
    if rows:
        # one plot per recipe, so that another recipe's table does not replace ptb-cpu's figure
        stem = "train_methods" + ("" if args.recipe == "ptb-cpu" else f"-{Path(args.recipe).stem}")
        plot = plot_curves(Path(args.out), methods, optimizers, Path(args.results).with_name(f"{stem}.png"))
        section += f"\n![validation perplexity per epoch]({plot.name})\n"
    append_section(Path(args.results), section)
    log.info("appended to %s", args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
