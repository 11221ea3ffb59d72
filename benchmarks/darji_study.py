"""Darji's sparsity study (arXiv 2407.20601) at a CPU-friendly scale, compared with the thesis's numbers.

Runs ``selfish-study prune`` and ``selfish-study graphs`` with the thesis's protocol but fewer strings, epochs and
graphs, then writes the section "Darji study" of ``benchmarks/RESULTS.md`` (other sections are left alone)::

    nice -n 10 .venv/bin/python benchmarks/darji_study.py            # ~15-25 min on 1-2 busy CPU cores
    .venv/bin/python benchmarks/darji_study.py --scale smoke          # a minute: checks the script only
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import re
from pathlib import Path

from selfish_deploy.training.study.cli import main as study
from selfish_deploy.training.study.results import read_csv

ROOT = Path(__file__).resolve().parent
SECTION = "## Darji study"

# Thesis (sec. 6.3 / Stier, Darji & Granitzer 2021): pruning level up to which accuracy holds without retraining,
# input+recurrent / recurrent only; and the graph study's GRU headline figures.
THESIS_HOLDS = {"rnn_tanh": (80, 80), "rnn_relu": (70, 70), "lstm": (60, 90), "gru": (80, 90)}
THESIS_GRU_SOURCES_R = 0.74
THESIS_BEST_R2 = 0.81

SCALES = {
    # name: (prune flags, graphs flags)
    "cpu": (["--strings", "4000", "--epochs", "10", "--retrain-epochs", "2"],
            ["--strings", "4000", "--epochs", "5", "--graphs", "6"]),
    "smoke": (["--strings", "300", "--epochs", "1", "--retrain-epochs", "1", "--levels", "50", "100",
               "--cells", "gru", "rnn_tanh"],
              ["--strings", "300", "--epochs", "1", "--graphs", "2", "--cells", "gru"]),
}


def prune_table(out: Path) -> tuple[list[str], dict]:
    summary = read_csv(out / "prune_summary.csv")
    by = {(s["cell"], s["regime"]): s for s in summary}
    cells = list(dict.fromkeys(s["cell"] for s in summary))
    lines = ["| cell | base acc | holds, no retraining: both / recurrent (thesis) | input only | "
             "back within tolerance after <= 1 retraining epoch: both / input / recurrent |",
             "|---|---|---|---|---|"]
    for cell in cells:
        both, rec, inp = by.get((cell, "both")), by.get((cell, "recurrent")), by.get((cell, "input"))
        t = THESIS_HOLDS.get(cell, ("?", "?"))
        fmt = lambda s, k: f"{s[k]}%" if s and s[k] != "" else "-"  # noqa: E731
        lines.append(f"| {cell} | {float(both['base_acc']):.4f} | {fmt(both, 'holds_no_retrain')} / "
                     f"{fmt(rec, 'holds_no_retrain')} ({t[0]}% / {t[1]}%) | {fmt(inp, 'holds_no_retrain')} | "
                     f"{fmt(both, 'recovers_one_epoch')} / {fmt(inp, 'recovers_one_epoch')} / "
                     f"{fmt(rec, 'recovers_one_epoch')} |")
    rows = read_csv(out / "prune.csv")
    acc = {}
    for r in rows:
        acc.setdefault((r["cell"], r["regime"], int(r["epoch"])), {})[int(r["pruned_pct"])] = float(r["test_acc"])
    levels = sorted({int(r["pruned_pct"]) for r in rows})
    detail = ["| cell | regime | epoch | " + " | ".join(f"{p}%" for p in levels) + " |",
              "|---|---|---|" + "---|" * len(levels)]
    for (cell, regime, epoch), vals in sorted(acc.items()):
        if epoch <= 1:
            detail.append(f"| {cell} | {regime} | {epoch} | " + " | ".join(f"{vals[p]:.3f}" for p in levels) + " |")
    return lines, {"detail": detail}


def graph_table(out: Path) -> list[str]:
    from selfish_deploy.training.study.analysis import kfold_r2
    from selfish_deploy.training.study.properties import PROPERTIES

    reg = read_csv(out / "graphs_regression.csv")
    corr = read_csv(out / "graphs_correlations.csv")
    rows = read_csv(out / "graphs.csv")
    lines = ["| cell | graphs | n | accuracy mean ± std | r(accuracy, sources) (p) | strongest properties (Pearson r) "
             "| 5-fold ridge R², alpha by LOO (median alpha) | same, alpha = 1 |", "|---|---|---|---|---|---|---|---|"]
    for r in reg:
        sub = [c for c in corr if c["cell"] == r["cell"] and c["generator"] == r["generator"]]
        src, src_p = next(((c["pearson_r"], c["pearson_p"]) for c in sub if c["property"] == "sources"), ("", ""))
        best = ", ".join(f"{c['property']} {float(c['pearson_r']):+.2f}" for c in sub[:3] if c["pearson_r"])
        r2 = f"{float(r['r2']):.2f} ({float(r['alpha_used']):.3g})" if r["r2"] else "-"
        group = [g for g in rows if g["cell"] == r["cell"] and r["generator"] in ("all", g["generator"])]
        fixed = kfold_r2([[float(g[p]) for p in PROPERTIES] for g in group], [float(g["test_acc"]) for g in group],
                         k=5, alpha=1.0)["r2"]
        fixed = "-" if fixed != fixed else f"{fixed:.2f}"
        src = f"{float(src):+.2f} (p {float(src_p):.2g})" if src else "-"
        lines.append(f"| {r['cell']} | {r['generator']} | {r['n']} | {float(r['acc_mean']):.3f} ± "
                     f"{float(r['acc_std']):.3f} | {src} | {best} | {r2} | {fixed} |")
    return lines


def resummarise(out: Path) -> None:
    """Recompute the summaries and plots of finished runs from their CSVs (``--reuse``)."""
    from selfish_deploy.training.study import graph_study, plots, prune_study
    from selfish_deploy.training.study.analysis import AUTO
    from selfish_deploy.training.study.config import GraphConfig, PruneConfig
    from selfish_deploy.training.study.results import write_csv

    def typed(rows):
        num = lambda v: float("nan") if v == "" else (int(v) if re.fullmatch(r"-?\d+", v) else float(v))  # noqa
        return [{k: v if k in ("cell", "regime", "generator") else num(v) for k, v in r.items()} for r in rows]

    def config(cls, path):
        raw = json.loads(path.read_text())["config"]
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    cfg = config(PruneConfig, out / "prune" / "config.json")
    rows = typed(read_csv(out / "prune" / "prune.csv"))
    summary = prune_study.summarise(rows, cfg)
    write_csv(out / "prune" / "prune_summary.csv", summary)
    (out / "prune" / "summary.txt").write_text(prune_study.format_summary(summary, cfg) + "\n")
    plots.prune_accuracy(rows, out / "prune" / "plots")
    plots.prune_recovery(rows, out / "prune" / "plots")
    gcfg = dataclasses.replace(config(GraphConfig, out / "graphs" / "config.json"), alpha=AUTO)  # today's default
    grows = typed(read_csv(out / "graphs" / "graphs.csv"))
    corr, reg = graph_study.analyse(grows, gcfg)
    write_csv(out / "graphs" / "graphs_correlations.csv", corr)
    write_csv(out / "graphs" / "graphs_regression.csv", reg)
    (out / "graphs" / "summary.txt").write_text(graph_study.format_summary(corr, reg) + "\n")
    plots.graph_correlations(corr, out / "graphs" / "plots")
    plots.graph_scatter(grows, corr, out / "graphs" / "plots")


def write_section(text: str, path: Path) -> None:
    """Replace our section of RESULTS.md (up to the next '## ' heading) or append it; nothing else changes."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = text.rstrip("\n") + "\n\n"
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="how much to run")
    p.add_argument("--out", default="runs/darji-study", help="study directories go under here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "RESULTS.md"), help="markdown file to update")
    p.add_argument("--reuse", action="store_true",
                   help="do not train: re-summarise the finished runs under --out and rewrite the section")
    args = p.parse_args()
    prune_flags, graph_flags = SCALES[args.scale]
    common = ["--threads", str(args.threads), "--seed", str(args.seed)]
    out = Path(args.out)
    if args.reuse:
        resummarise(out)
    else:
        assert study(["prune", *prune_flags, *common, "--out", str(out / "prune")]) == 0
        assert study(["graphs", *graph_flags, *common, "--out", str(out / "graphs")]) == 0
    t_prune = json.loads((out / "prune" / "config.json").read_text())["seconds"]
    t_graphs = json.loads((out / "graphs" / "config.json").read_text())["seconds"]

    prune_lines, extra = prune_table(out / "prune")
    gcfg = json.loads((out / "graphs" / "config.json").read_text())["config"]
    pcfg = json.loads((out / "prune" / "config.json").read_text())["config"]
    import torch

    text = "\n".join([
        SECTION, "",
        f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__} "
        f"on CPU with {args.threads} thread(s), shared with other jobs (run under `nice -n 10`). "
        f"Date: {dt.date.today().isoformat()}. Command: `python benchmarks/darji_study.py --scale {args.scale}`; "
        f"wall time {t_prune / 60:.1f} min (prune) + {t_graphs / 60:.1f} min (graphs).",
        "",
        "Scale (thesis in brackets): "
        f"prune -- {pcfg['strings']} strings [25,000], base training {pcfg['epochs']} epochs [10], "
        f"retraining {pcfg['retrain_epochs']} epochs after pruning [10], 3 x {pcfg['hidden']} units, batch "
        f"{pcfg['batch_size']}, Adam {pcfg['lr']}, clip {pcfg['clip']}; "
        f"graphs -- {gcfg['strings']} strings [25,000], {gcfg['graphs']} graphs per generator and cell [100], "
        f"{gcfg['epochs']} epochs [15], batch {gcfg['batch_size']} [128], n in [{gcfg['min_nodes']}, "
        f"{gcfg['max_nodes']}], recurrence `{gcfg['recurrent']}` [thesis: dense], embedding = one unit per source. "
        f"'Holds' = largest pruning level up to which test accuracy stays within {pcfg['tolerance']} of the "
        f"unpruned model's.",
        "",
        "### Pruning: how far accuracy holds",
        "", *prune_lines, "",
        "Test accuracy right after pruning (epoch 0) and after one retraining epoch:", "",
        *extra["detail"], "",
        "### Random-graph Sparse-RNNs",
        "",
        f"Thesis: GRU accuracy correlates with the number of source nodes (r = {THESIS_GRU_SOURCES_R}); "
        f"accuracy predicted from graph properties with R² up to {THESIS_BEST_R2}.", "",
        *graph_table(out / "graphs"), "",
        "Plots and CSVs: `" + str(out) + "/{prune,graphs}/`.", "",
    ])
    write_section(text, Path(args.results))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
