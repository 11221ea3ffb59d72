"""Export file sizes and ONNX Runtime load cost for the reference model at densities 1.0, 0.33 and 0.1.

    python benchmarks/export_size.py [--densities 1.0 0.33 0.1] [--repeats 3] [--write-results]

Reference model: 2-layer LSTM, hidden 650, embedding 650, vocabulary 10,000, untied, every weight matrix at
the same density (uniform). Weights are PyTorch's initialisation and masks are random: file sizes depend
only on shapes, nnz and dtypes, not on training. Compared: the dense fp32 safetensors file of the weights
(no masks), the CSR export's model.safetensors in fp32 and fp16, and model.onnx (fp32) with dense
initializers vs sparse initializers. Each ONNX file is loaded in a fresh process (1 thread): session
creation time (median of ``--repeats``), resident memory added by the session and peak resident memory.
``--write-results`` puts the tables into benchmarks/RESULTS.md under "## Export size".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
from safetensors.torch import save_file

from common import cpu_name, replace_section
from selfish_deploy.export.writer import export_run
from selfish_deploy.masks import MaskRegistry
from selfish_deploy.model import RNNLM, ModelConfig
from selfish_deploy.rundir import RUN_FORMAT, RUN_FORMAT_VERSION, save_weights, write_json
from selfish_deploy.vocab import Vocabulary

REFERENCE = ModelConfig(arch="lstm", vocab_size=10_000, emb=650, hidden=650, layers=2, tie_weights=False)
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Export size"
MIB = 1 << 20

# Runs in a fresh interpreter: memory before and after creating the session, from /proc/self/status.
PROBE = r"""
import json, sys, time
import numpy as np, onnxruntime as ort

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
before = status("VmRSS:")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
t = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
load_s = time.perf_counter() - t
feeds = {i.name: (np.zeros((1, 35), np.int64) if i.name == "tokens" else np.zeros((1, i.shape[1]), np.float32))
         for i in session.get_inputs()}
session.run(None, feeds)  # one 35-token call: the session really works
print(json.dumps({"load_s": load_s, "rss_added": status("VmRSS:") - before, "peak_rss": status("VmHWM:")}))
"""


def write_reference_run(path: Path, density: float, seed: int = 0) -> Path:
    """A run directory holding the reference model at ``density`` (random weights and masks)."""
    torch.manual_seed(seed)
    model = RNNLM(REFERENCE)
    masks = MaskRegistry(model, density, generator=torch.Generator().manual_seed(seed), arch=REFERENCE.arch)
    path.mkdir(parents=True, exist_ok=True)
    save_weights(path / "model.safetensors", model, masks.masks)
    words = ["<eos>", "<unk>", *(f"w{i}" for i in range(2, REFERENCE.vocab_size))]
    Vocabulary(words).save(path / "vocab.txt")
    write_json(path / "config.json", {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "model": REFERENCE.to_dict(),
        "train": {}, "corpus": {"name": "synthetic (benchmark)"}, "vocab_size": REFERENCE.vocab_size,
        "density": masks.total_density(), "density_per_tensor": {n: masks.density(n) for n in masks},
        "results": {},
    })
    return path


def dense_fp32_file(path: Path) -> int:
    """Bytes of a plain safetensors file with every weight dense in fp32 (the baseline)."""
    torch.manual_seed(0)
    weights = {n: p.detach().contiguous() for n, p in RNNLM(REFERENCE).named_parameters()}
    save_file(weights, str(path))
    return path.stat().st_size


def probe(onnx_path: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", PROBE, str(onnx_path)], check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"load_s": statistics.median(r["load_s"] for r in runs),
            "rss_added": statistics.median(r["rss_added"] for r in runs),
            "peak_rss": statistics.median(r["peak_rss"] for r in runs)}


def measure(density: float, work: Path, repeats: int) -> dict:
    run = write_reference_run(work / f"run-{density}", density)
    row = {"density": density}
    for dtype in ("fp32", "fp16"):
        report = export_run(run, work / f"csr-{density}-{dtype}", dtype)
        row[f"csr_{dtype}"] = report["files"]["model.safetensors"]
    for kind, sparse in (("dense", False), ("sparse", True)):
        out = work / f"onnx-{density}-{kind}"
        report = export_run(run, out, "fp32", onnx=not sparse, onnx_sparse=sparse)
        row[f"onnx_{kind}"] = report["files"]["model.onnx"]
        row[f"ort_{kind}"] = probe(out / "model.onnx", repeats)
    return row


def tables(rows: list[dict], dense: int) -> str:
    def mb(b):
        return f"{b / MIB:.1f}"

    lines = ["| density | dense fp32 safetensors MiB | CSR fp32 MiB (x dense) | CSR fp16 MiB (x dense) "
             "| ONNX dense MiB | ONNX sparse-init MiB (x ONNX dense) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['density']} | {mb(dense)} | {mb(r['csr_fp32'])} ({r['csr_fp32'] / dense:.3f}x) "
                     f"| {mb(r['csr_fp16'])} ({r['csr_fp16'] / dense:.3f}x) | {mb(r['onnx_dense'])} "
                     f"| {mb(r['onnx_sparse'])} ({r['onnx_sparse'] / r['onnx_dense']:.3f}x) |")
    lines += ["", "| density | ONNX file | ORT session load s | RSS added by the session MiB | peak RSS MiB |",
              "| ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        for kind in ("dense", "sparse"):
            o = r[f"ort_{kind}"]
            name = "dense initializers" if kind == "dense" else "sparse initializers"
            if kind == "sparse" and r["density"] >= 1.0:
                name += " (none: a dense export has no CSR matrix)"
            lines.append(f"| {r['density']} | {name} | {o['load_s']:.3f} | {mb(o['rss_added'])} | {mb(o['peak_rss'])} |")
    targets = {0.33: 0.35, 0.1: 0.11}  # issue 4: CSR fp16 file at most this fraction of the dense fp32 file
    checks = [f"density {r['density']}: CSR fp16 {r['csr_fp16'] / dense:.3f}x (target <= {targets[r['density']]}x: "
              f"{'met' if r['csr_fp16'] / dense <= targets[r['density']] else 'MISSED'})"
              for r in rows if r["density"] in targets]
    if checks:
        lines += ["", "Targets: " + "; ".join(checks) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.33, 0.1])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per ONNX file for load time/memory")
    ap.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dense = dense_fp32_file(work / "dense.safetensors")
        rows = []
        for d in args.densities:
            rows.append(measure(d, work, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    table = tables(rows, dense)
    print(table)
    if args.write_results:
        note = (f"Machine: {cpu_name()}, {date.today().isoformat()}, `python benchmarks/export_size.py "
                f"--write-results`, onnxruntime {__import__('onnxruntime').__version__}, 1 thread.\n\n"
                "Reference model: 2-layer LSTM, hidden 650, emb 650, vocab 10,000, untied, every matrix at the "
                "given density (uniform); random weights and masks (sizes depend only on shapes, nnz and dtypes). "
                "CSR files: uint16 column indices (every matrix has <= 65,536 columns), int32 row pointers, "
                "biases fp32. ONNX files hold fp32 weights; sparse initializers store int64 linearized "
                "indices (the ONNX spec), so 12 bytes per alive weight against 4 per weight dense: smaller only "
                "below density 1/3.\n\n"
                "What ONNX Runtime does with sparse initializers: it converts each one into a dense initializer "
                "when it builds the graph (onnxruntime/core/graph/graph.cc, Graph constructor: \"For now we "
                "convert sparse_intializer to dense tensors since there are currently no supported ops that "
                "consume sparse initializers directly\"). The session below therefore holds the dense weights "
                "either way: the memory a session adds is never below that of the dense file (it is above it: the sparse protobuf and the densified copy coexist during loading), and the smaller file brings no consistent gain in load time. Sparse "
                "initializers shrink the download, not memory or compute; sparse compute is the CSR runtime's "
                "job. Load times are medians of fresh processes on a shared 2-core machine: noisy.")
        replace_section(RESULTS, SECTION, f"{SECTION}\n\n{note}\n\n{table}")


if __name__ == "__main__":
    main()
