"""Darji's sparsity study (arXiv 2407.20601) at a CPU-friendly scale, compared with the thesis's numbers.

Runs ``selfish-study prune`` and ``selfish-study graphs`` with the thesis's protocol but fewer strings, epochs and
graphs, then writes the section "Darji study" of ``benchmarks/RESULTS.md`` (other sections are left alone)::

    nice -n 10 .venv/bin/python benchmarks/darji_study.py            # ~15-25 min on 1-2 busy CPU cores
    .venv/bin/python benchmarks/darji_study.py --scale smoke          # a minute: checks the script only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import re
import time
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
             "holds after 1 epoch: both / input / recurrent |",
             "|---|---|---|---|---|"]
    for cell in cells:
        both, rec, inp = by.get((cell, "both")), by.get((cell, "recurrent")), by.get((cell, "input"))
        t = THESIS_HOLDS.get(cell, ("?", "?"))
        fmt = lambda s, k: f"{s[k]}%" if s and s[k] != "" else "-"  # noqa: E731
        lines.append(f"| {cell} | {float(both['base_acc']):.4f} | {fmt(both, 'holds_no_retrain')} / "
                     f"{fmt(rec, 'holds_no_retrain')} ({t[0]}% / {t[1]}%) | {fmt(inp, 'holds_no_retrain')} | "
                     f"{fmt(both, 'holds_one_epoch')} / {fmt(inp, 'holds_one_epoch')} / "
                     f"{fmt(rec, 'holds_one_epoch')} |")
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
    reg = read_csv(out / "graphs_regression.csv")
    corr = read_csv(out / "graphs_correlations.csv")
    lines = ["| cell | graphs | n | accuracy mean ± std | r(accuracy, sources) | strongest properties (Pearson r) "
             "| 5-fold ridge R² |", "|---|---|---|---|---|---|---|"]
    for r in reg:
        sub = [c for c in corr if c["cell"] == r["cell"] and c["generator"] == r["generator"]]
        src = next((c["pearson_r"] for c in sub if c["property"] == "sources"), "")
        best = ", ".join(f"{c['property']} {float(c['pearson_r']):+.2f}" for c in sub[:3] if c["pearson_r"])
        r2 = f"{float(r['r2']):.2f}" if r["r2"] else "-"
        src = f"{float(src):+.2f}" if src else "-"
        lines.append(f"| {r['cell']} | {r['generator']} | {r['n']} | {float(r['acc_mean']):.3f} ± "
                     f"{float(r['acc_std']):.3f} | {src} | {best} | {r2} |")
    return lines


def write_section(text: str, path: Path) -> None:
    """Replace our section of RESULTS.md (up to the next '## ' heading) or append it; nothing else changes."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="how much to run")
    p.add_argument("--out", default="runs/darji-study", help="study directories go under here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "RESULTS.md"), help="markdown file to update")
    args = p.parse_args()
    prune_flags, graph_flags = SCALES[args.scale]
    common = ["--threads", str(args.threads), "--seed", str(args.seed)]
    out = Path(args.out)
    t0 = time.time()
    assert study(["prune", *prune_flags, *common, "--out", str(out / "prune")]) == 0
    t_prune = time.time() - t0
    assert study(["graphs", *graph_flags, *common, "--out", str(out / "graphs")]) == 0
    t_graphs = time.time() - t0 - t_prune

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
