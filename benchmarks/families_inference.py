"""Inference speed of the paper's other model families: the sparse engine against ONNX Runtime and PyTorch dense.

    python benchmarks/families_inference.py [--models rhn-cpu rhn-paper] [--threads 2] [--write-results]

Models (random weights and masks, every weight matrix sparse at the density, as the family's registry entry
lists them; speed depends on shapes and non-zeros, not on training):
``rhn-cpu``: the ``ptb-rhn-cpu`` recipe's RHN (one coupled layer, width 200, depth 4, tied, density 0.472);
``rhn-paper``: the ``ptb-rhn`` recipe's (width 830, depth 10); ``on-lstm-cpu``: the ``ptb-on-lstm-cpu`` recipe's
ON-LSTM (3 layers of 300, the last 200 for the tied decoder, chunk size 10, density 0.45); ``awd-lstm-cpu``:
``ptb-awd-lstm-cpu``'s AWD-LSTM (3 layers of 400, the last 200, density 0.45); ``awd-lstm-mos-cpu``:
``wt2-awd-lstm-mos-cpu``'s AWD-LSTM-MoS (3 layers of 400, the last 200, 3 experts, embedding 100, WikiText-2's
vocabulary of 33,278). Vocabulary 10,000 unless said.
Cases as ``inference.py``: (a) one generation step at batch 1 with the state carried, (b) scoring one
2,000-token text, (c) 32 texts x 64 tokens. Engines, each alone in a fresh process, through ``SparseLM``:
``sparse`` (compiled kernels), ``onnx`` (the exported dense graph in ONNX Runtime) and ``dense`` (the training
model's eval forward in PyTorch). The sparse engine's scores are checked against the dense backend first.
Do not run it while anything else (a training job) uses the machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median_ms, probe_line, replace_section, speed_probe  # noqa: E402
from inference import check, inputs  # noqa: E402  the same texts and the same check as the LSTM benchmark

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## Inference speed: the paper's other families"
MODELS = {
    "rhn-cpu": {"arch": "rhn", "emb": 200, "hidden": 200, "layers": 1, "tie_weights": True, "density": 0.472,
                "options": {"depth": 4}},
    "rhn-paper": {"arch": "rhn", "emb": 830, "hidden": 830, "layers": 1, "tie_weights": True, "density": 0.472,
                  "options": {"depth": 10}},
    "on-lstm-cpu": {"arch": "on_lstm", "emb": 200, "hidden": 300, "layers": 3, "tie_weights": True, "density": 0.45,
                    "options": {"chunk_size": 10, "wdrop": 0.3}},
    "awd-lstm-cpu": {"arch": "awd_lstm", "emb": 200, "hidden": 400, "layers": 3, "tie_weights": True,
                     "density": 0.45, "options": {"wdrop": 0.3}},
    "awd-lstm-mos-cpu": {"arch": "awd_lstm", "emb": 100, "hidden": 400, "layers": 3, "tie_weights": True,
                         "decoder": "mos", "experts": 3, "density": 0.45, "vocab_size": 33278,
                         "options": {"last_hidden": 200, "wdrop": 0.25}},
}
ENGINES = ("sparse", "onnx", "dense")
CASES = {"a": "generation step, batch 1", "b": "score 1 x 2,000 tokens", "c": "score 32 x 64 tokens"}


def write_export(name: str, work: Path) -> Path:
    """A random run of MODELS[name], exported with model.onnx."""
    import torch

    from selfish_deploy.export.writer import export_run
    from selfish_deploy.masks import MaskRegistry
    from selfish_deploy.model import RNNLM, ModelConfig
    from selfish_deploy.rundir import RUN_FORMAT, RUN_FORMAT_VERSION, save_weights, write_json
    from selfish_deploy.vocab import Vocabulary

    spec = dict(MODELS[name])
    density, vocab = spec.pop("density"), spec.pop("vocab_size", 10_000)
    cfg = ModelConfig(vocab_size=vocab, dropout=0.0, **spec)
    torch.manual_seed(0)
    model = RNNLM(cfg)
    masks = MaskRegistry(model, density, generator=torch.Generator().manual_seed(0), arch=cfg.arch)
    run = work / f"run-{name}"
    run.mkdir(parents=True, exist_ok=True)
    save_weights(run / "model.safetensors", model, masks.masks)
    Vocabulary(["<eos>", "<unk>", *(f"w{i}" for i in range(2, cfg.vocab_size))]).save(run / "vocab.txt")
    write_json(run / "config.json", {
        "format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "model": cfg.to_dict(), "train": {},
        "corpus": {"name": "synthetic (benchmark)"}, "vocab_size": cfg.vocab_size,
        "density": masks.total_density(), "density_per_tensor": {n: masks.density(n) for n in masks}, "results": {}})
    out = work / f"export-{name}"
    export_run(run, out, "fp32", onnx=True)
    return out


def worker(engine: str, model: str, threads: int, repeats: int) -> dict:
    """Time the three cases with one engine in this process (ms per case)."""
    import torch

    from selfish_deploy.runtime import SparseLM

    torch.set_num_threads(threads)
    lm = SparseLM.load(model, backend=engine, threads=threads)
    long, short = (t.tolist() for t in inputs(len(lm.vocab)))
    state = [lm.init_state(1)]
    tok = torch.tensor([[5]])

    def step():
        _, state[0] = lm.forward(tok, state[0])

    cases = {"a": step, "b": lambda: lm.score_ids([long]), "c": lambda: lm.score_ids(short)}
    reps = {"a": max(50, 20 * repeats), "b": repeats, "c": repeats}
    return {"engine": engine, "kernels": lm.backend.kernels_name,
            **{k: median_ms(fn, reps[k], warmup=2) for k, fn in cases.items()}}


def spawn(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    lines = ["| model | threads | case | sparse ms | ORT dense ms | PyTorch dense ms | sparse vs best dense |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        t = r["times"]
        for k, case in CASES.items():
            best = min(t["onnx"][k], t["dense"][k])
            lines.append(f"| {r['model']} | {r['threads']} | {case} | {t['sparse'][k]:.2f} | {t['onnx'][k]:.2f} "
                         f"| {t['dense'][k]:.2f} | **{best / t['sparse'][k]:.2f}x** |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--check":
        print(json.dumps({"max_rel_err": check(sys.argv[2])}))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--threads", nargs="+", type=int, default=[2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per engine, interleaved; the best counts")
    p.add_argument("--work", default=None, help="directory for the exports (default: a temporary one)")
    p.add_argument("--write-results", action="store_true", help="replace --section in benchmarks/RESULTS.md")
    p.add_argument("--section", default=SECTION, help=f"the RESULTS.md heading to write (default: '{SECTION}')")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rows, errors, probes = [], {}, [speed_probe()]
        for name in args.models:
            model = write_export(name, work)
            errors[name] = spawn("--check", model)["max_rel_err"]
            for threads in args.threads:
                times = {e: {} for e in ENGINES}
                for _ in range(args.rounds):
                    for e in ENGINES:
                        got = spawn("--worker", e, model, threads, args.repeats)
                        for k in CASES:
                            times[e][k] = min(times[e].get(k, float("inf")), got[k])
                    probes.append(speed_probe())
                rows.append({"model": name, "threads": threads, "times": times})
                print(table(rows[-1:]), flush=True)
    text = table(rows)
    print(text)
    if args.write_results:
        now = datetime.now(timezone.utc)
        shapes = "; ".join(f"`{n}`: {MODELS[n]}" for n in args.models)
        body = (f"{args.section}\n\n{now:%Y-%m-%d %H:%M} UTC, {machine()}. `python benchmarks/families_inference.py "
                f"{shlex.join(sys.argv[1:])}`; one engine per process, median of {args.repeats} calls (step: of "
                f"{max(50, 20 * args.repeats)}), best of {args.rounds} interleaved rounds. Models (vocabulary "
                f"10,000, random weights and masks): {shapes}. Sparse scores equal the dense backend's (max "
                f"relative error {max(errors.values()):.1e}). 'vs best dense' is the faster of ONNX Runtime and "
                f"PyTorch divided by ours. {probe_line(probes)}\n\n{text}\n")
        replace_section(RESULTS, args.section, body)
        print(f"wrote {args.section} in {RESULTS}")


if __name__ == "__main__":
    main()
