"""Inference speed and memory: the sparse engine against ONNX Runtime and PyTorch dense, side by side.

    python benchmarks/inference.py [--densities 1.0 0.33 0.2 0.1 0.05] [--threads 1 2] [--dtypes fp32]
        [--write-results [--section HEADING]]

Models: the reference model (2-layer LSTM, hidden and embedding 650, vocabulary 10,000, untied, every weight
matrix sparse at the density, random masks; export_size.py's ``write_reference_run``, exported with values stored
as ``--dtypes``: fp32 by default; fp16 or bf16 are the same model with its values rounded, which the dense engines
run widened to fp32) and the bundled model.
Cases: (a) one generation step at batch 1 with the state carried, (b) scoring one 2,000-token text, (c)
scoring 32 texts x 64 tokens. Engines, each alone in a fresh process: ``sparse`` (SparseLM, compiled kernels),
``ort`` (the exported dense ONNX graph in ONNX Runtime), ``torch`` (dense PyTorch: an LSTMCell-style eager step
for (a), nn.LSTM for (b) and (c)). Reported: median ms, ours vs the faster dense engine, non-zeros per second
at (a) against the batch-1 ceiling (one non-zero per cycle per core), and resident memory after loading.
The sparse engine's answers are checked against the dense backend before timing. Do not run it while anything
else (a training job) uses the machine.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, median_ms, probe_line, replace_section, speed_probe  # noqa: E402

RESULTS = HERE / "RESULTS.md"
SECTION = "## Inference speed"
CASES = {"a": "generation step, batch 1", "b": "score 1 x 2,000 tokens", "c": "score 32 x 64 tokens"}


def rss_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def inputs(V: int):
    import torch

    g = torch.Generator().manual_seed(0)
    long = torch.randint(0, V, (2001,), generator=g)
    short = torch.randint(0, V, (32, 65), generator=g)
    return long, short


def worker(engine: str, model: str, threads: int, repeats: int) -> dict:
    """Time the three cases with one engine in this process; returns ms per case and memory."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    before = rss_mib()
    if engine == "sparse":
        from selfish_deploy.runtime import SparseLM

        lm = SparseLM.load(model, backend="sparse", threads=threads)  # loading runs one warm-up step
        V = len(lm.vocab)
        long, short = inputs(V)
        after = rss_mib()
        state = [lm.init_state(1)]
        tok = torch.tensor([[5]])

        def step():
            _, state[0] = lm.forward(tok, state[0])

        seqs_long, seqs_short = [long.tolist()], short.tolist()
        cases = {"a": step, "b": lambda: lm.score_ids(seqs_long), "c": lambda: lm.score_ids(seqs_short)}
        kernels = lm.backend.kernels_name
    elif engine == "ort":
        from selfish_deploy.export.onnx_runner import OnnxLM

        onnx = OnnxLM.load(model, threads=threads)
        from selfish_deploy.exportdir import load_export

        V = load_export(model).model_config.vocab_size
        long, short = inputs(V)
        onnx.forward(np.array([[5]], np.int64))  # the same warm-up step as the sparse engine's
        after = rss_mib()
        state = [onnx.init_state(1)]
        tok = np.array([[5]], np.int64)

        def step():
            _, state[0] = onnx.forward(tok, state[0])

        def score(ids):
            x, y = ids[:, :-1].numpy(), ids[:, 1:].numpy()
            logp, _ = onnx.forward(x)
            return np.take_along_axis(logp, y[..., None], -1)

        cases = {"a": step, "b": lambda: score(long.view(1, -1)), "c": lambda: score(short)}
        kernels = "ONNX Runtime CPU EP"
    else:
        from selfish_deploy.runtime import SparseLM

        dense = SparseLM.load(model, backend="dense", threads=threads)
        m = dense.backend.model
        V = m.config.vocab_size
        long, short = inputs(V)
        cells = []
        for rnn in m.rnns:  # the same weights as LSTMCells: the eager step a user would write
            cell = torch.nn.LSTMCell(rnn.input_size, rnn.hidden_size)
            cell.load_state_dict({k.replace("_l0", ""): v for k, v in rnn.state_dict().items()})
            cells.append(cell.eval())
        del dense
        with torch.inference_mode():
            m(torch.tensor([[5]]), m.init_hidden(1))  # warm-up step
        after = rss_mib()
        st = [[(torch.zeros(1, c.hidden_size), torch.zeros(1, c.hidden_size)) for c in cells]]
        tok = torch.tensor([5])

        @torch.inference_mode()
        def step():
            x = m.encoder(tok)
            new = []
            for cell, s in zip(cells, st[0]):
                h, c = cell(x, s)
                new.append((h, c))
                x = h
            st[0] = new
            return torch.log_softmax(m.decoder(x), -1)

        @torch.inference_mode()
        def score(ids):  # ids (B, T+1)
            x, y = ids[:, :-1].t(), ids[:, 1:].t()
            logits, _ = m(x, m.init_hidden(x.shape[1]))
            return torch.log_softmax(logits, -1).gather(2, y.unsqueeze(-1))

        cases = {"a": step, "b": lambda: score(long.view(1, -1)), "c": lambda: score(short)}
        kernels = "PyTorch dense (LSTMCell eager / nn.LSTM)"
    out = {"engine": engine, "kernels": kernels, "rss_before_mib": before, "rss_after_mib": after}
    reps = {"a": max(50, 20 * repeats), "b": repeats, "c": repeats}
    for k, fn in cases.items():
        out[k] = median_ms(fn, reps[k], warmup=2)
    out["rss_end_mib"] = rss_mib()
    return out


def check(model: str) -> float:
    """Max relative error of the sparse engine's scores against the dense backend on both scoring cases."""
    import torch

    from selfish_deploy.runtime import SparseLM

    sparse, dense = SparseLM.load(model, "sparse"), SparseLM.load(model, "dense")
    long, short = inputs(len(sparse.vocab))
    worst = 0.0
    for seqs in ([long[:300].tolist()], short.tolist()):
        a = torch.tensor([x for s in sparse.score_ids(seqs) for x in s.logprobs])
        b = torch.tensor([x for s in dense.score_ids(seqs) for x in s.logprobs])
        worst = max(worst, float((a - b).abs().max() / b.abs().max()))
    return worst


def spawn(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_facts(model: str) -> dict:
    from selfish_deploy.exportdir import load_export

    ex = load_export(model)
    names = [n for n in ex.sparse] + [n for n in ex.dense if ex.dense[n].dim() == 2]
    step_nnz = sum((ex.sparse[n].nnz if n in ex.sparse else ex.dense[n].numel()) for n in names
                   if n != "encoder.weight" or ex.model_config.tie_weights)
    return {"density": float(ex.config.get("density", 1.0)), "step_nnz": step_nnz,
            "file_mib": (Path(model) / "model.safetensors").stat().st_size / 2**20,
            "arch": f"{ex.model_config.layers}x{ex.model_config.hidden} {ex.model_config.arch}"}


def cpu_mhz() -> float:
    text = Path("/proc/cpuinfo").read_text()
    found = re.findall(r"cpu MHz\s*:\s*([0-9.]+)", text)
    return float(found[0]) if found else float("nan")


def table(rows: list[dict]) -> str:
    lines = ["| model | density | threads | case | sparse ms | ORT dense ms | PyTorch dense ms | sparse vs best dense "
             "| nnz/s per core (% of ceiling) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    mhz = cpu_mhz()
    for r in rows:
        for k, name in CASES.items():
            s, o, t = r["sparse"][k], r["ort"][k], r["torch"][k]
            rate = ""
            if k == "a":
                per_core = r["step_nnz"] / (s / 1000) / r["threads"]
                rate = f"{per_core / 1e9:.2f} G ({100 * per_core / (mhz * 1e6):.0f}%)"
            lines.append(f"| {r['model']} | {r['density']:.2f} | {r['threads']} | {name} | {s:.2f} | {o:.2f} | "
                         f"{t:.2f} | **{min(o, t) / s:.2f}x** | {rate} |")
    lines += ["", "Resident memory: after the imports, and after loading plus one warm-up step (for ours that builds "
              "the batch-1 SELL-8 copy of every matrix). Target: added by load at most the CSR file + 150 MiB.", "",
              "| model | density | CSR file MiB | RSS after imports MiB | RSS after load MiB | added by load MiB "
              "| ORT: added by load MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["threads"] != max(x["threads"] for x in rows):
            continue
        s, o = r["sparse"], r["ort"]
        lines.append(f"| {r['model']} | {r['density']:.2f} | {r['file_mib']:.1f} | {s['rss_before_mib']:.0f} | "
                     f"{s['rss_after_mib']:.0f} | {s['rss_after_mib'] - s['rss_before_mib']:.1f} | "
                     f"{o['rss_after_mib'] - o['rss_before_mib']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        print(json.dumps({"max_rel_err": check(sys.argv[2])}))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.33, 0.2, 0.1, 0.05])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="fresh processes per engine, interleaved; the best round "
                    "counts (these VMs' second vCPU is sometimes descheduled for whole 4 ms ticks)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/selfish-inference-bench"), help="reference exports")
    ap.add_argument("--no-bundled", action="store_true", help="skip the bundled model")
    ap.add_argument("--dtypes", nargs="+", choices=("fp32", "fp16", "bf16"), default=["fp32"],
                    help="stored value types of the reference exports (each a model of its own)")
    ap.add_argument("--write-results", action="store_true", help="replace --section in benchmarks/RESULTS.md")
    ap.add_argument("--section", default=SECTION, help=f"the RESULTS.md heading to write (default: '{SECTION}')")
    ap.add_argument("--json", type=Path, help="also write every row as JSON")
    ap.add_argument("--card-json", type=Path, help="the bundled model's rows (most threads) as a speed report for "
                    "its model card: selfish-export --refresh DIR --speed-report FILE")
    args = ap.parse_args()

    from export_size import write_reference_run

    from selfish_deploy.assets import default_model_dir
    from selfish_deploy.export.writer import export_run

    models = []
    for d in args.densities:
        for dtype in args.dtypes:
            out = args.work / (f"reference-{d}" if dtype == "fp32" else f"reference-{d}-{dtype}")
            if not (out / "model.onnx").is_file():
                export_run(write_reference_run(args.work / f"run-{d}", d), out, dtype, onnx=True)
            models.append(("reference 2x650" + ("" if dtype == "fp32" else f" ({dtype} values)"), str(out)))
    if not args.no_bundled:
        bundled = args.work / "bundled"
        if not (bundled / "model.onnx").is_file():  # the bundled export has no ONNX graph: make one beside it
            import shutil

            from selfish_deploy.export.onnx_graph import build_onnx, save_onnx
            from selfish_deploy.exportdir import load_export

            from selfish_deploy.exportdir import write_manifest

            shutil.copytree(default_model_dir(), bundled, dirs_exist_ok=True)
            save_onnx(build_onnx(load_export(bundled)), bundled / "model.onnx")
            write_manifest(bundled)  # the copy now also holds model.onnx
        models.append(("bundled 2x200", str(bundled)))
    rows, probes = [], [speed_probe()]
    for name, path in models:
        facts = model_facts(path)
        err = spawn("--check", path)["max_rel_err"]
        for t in args.threads:
            row = {"model": name, "path": path, "threads": t, **facts, "max_rel_err": err}
            runs = {e: [] for e in ("sparse", "ort", "torch")}
            for _ in range(args.rounds):
                for engine in runs:
                    runs[engine].append(spawn("--worker", engine, path, t, args.repeats))
                probes.append(speed_probe())
            for engine, results in runs.items():
                best = dict(results[0])
                for k in CASES:
                    best[k] = min(r[k] for r in results)
                row[engine] = best
            rows.append(row)
            print(f"{name} density {facts['density']:.2f}, {t} thread(s): " + ", ".join(
                f"{k} {row['sparse'][k]:.2f} ms ({min(row['ort'][k], row['torch'][k]) / row['sparse'][k]:.2f}x)"
                for k in CASES), flush=True)
    kernels = rows[0]["sparse"]["kernels"]
    worst = max(r["max_rel_err"] for r in rows)
    text = (f"{args.section}\n\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()}, {cpu_mhz():.0f} MHz; "
            f"sparse kernels: {kernels}. "
            f"`python benchmarks/inference.py {shlex.join(sys.argv[1:])}`; one engine per "
            f"process, median of {args.repeats} calls (generation step: of {max(50, 20 * args.repeats)} steps), "
            f"best of {args.rounds} interleaved rounds. "
            f"Sparse scores equal the dense backend's (max relative error {worst:.1e}). 'vs best dense' is the "
            f"faster of ONNX Runtime and PyTorch divided by ours (> 1: ours is faster). {probe_line(probes)}"
            f"\n\n{table(rows)}\n")
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "date": str(date.today()), "rows": rows, "probes": probes}, indent=1))
    bundled_rows = [r for r in rows if r["model"].startswith("bundled")]
    if args.card_json and bundled_rows:
        r = max(bundled_rows, key=lambda r: r["threads"])
        card = [{"case": f"{name} ({r['threads']} threads)", "ours_ms": r["sparse"][k],
                 "dense_ms": min(r["ort"][k], r["torch"][k]), "speedup": min(r["ort"][k], r["torch"][k]) / r["sparse"][k]}
                for k, name in CASES.items()]
        args.card_json.write_text(json.dumps({"machine": machine(), "date": str(date.today()), "rows": card}, indent=1))
    if args.write_results:
        replace_section(RESULTS, args.section, text)


if __name__ == "__main__":
    main()
