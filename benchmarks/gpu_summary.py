"""GPU check: the environment record, and ``summary.md`` + ``results.json`` from the parts' results.

    python benchmarks/gpu_summary.py env --device cuda --out PARTS/env.json
    python benchmarks/gpu_summary.py summary --parts PARTS --out OUT_DIR --command "..."

gpu_check.sh writes each part's JSON, its status (``NAME.status.json``: rc, seconds, ok/failed/timed out/
skipped) and pytest's JUnit XML into PARTS, and calls ``summary`` after every part, so OUT_DIR always holds
what is known so far even if the whole command is stopped. The tables are ready for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

PARTS = ("setup", "tests", "equality", "steps", "inference", "epochs")
LOGS = {"setup": "check.log", "tests": "tests.log", "equality": "equality.log", "steps": "train.log",
        "inference": "inference.log", "epochs": "train.log"}
TITLES = {"setup": "install check", "tests": "gpu-marked tests", "equality": "CPU vs device equality",
          "steps": "median step time", "inference": "inference", "epochs": "epoch loop"}


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def junit(path: Path) -> dict | None:
    """Counts and failed test ids from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": []}
    for suite in root.iter("testsuite"):
        for k in ("tests", "failures", "errors", "skipped"):
            out[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out["failed"].append(f"{case.get('classname')}::{case.get('name')}")
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    return out


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def hms(s) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def equality_section(eq: dict, device: str) -> list[str]:
    lines = [f"### CPU vs {device}: one training step and the runtime's log-probabilities", ""]
    if device == "cpu":
        lines += ["Dry run on the CPU: the device side is the CPU as well, so this checks the path, not CUDA.", ""]
    rows = eq.get("training_step") or []
    if rows:
        lines += ["One trainer step (ptb-tiny, selfish, SNT-ASGD averaging from step 1, dropout 0), CPU vs device:",
                  "", "| setting | weights rel. err | optimizer state rel. err | masks equal | loss diff | tolerance "
                  "| ok |",
                  "|---|---:|---:|---|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r['setting']} | {r['weights_rel_err']:.1e} | {r['optimizer_state_rel_err']:.1e} | "
                         f"{r['masks_equal']} | {r['train_loss_diff']:.1e} | {r['tolerance']:.0e} | "
                         f"{'yes' if r['ok'] else '**no**'} |")
        lines.append("")
    rows = eq.get("runtime_logprobs") or []
    if rows:
        lines += ["Runtime on the reference model (density 0.33) against the CPU sparse backend:", "",
                  "| engine | setting | kernels | forward rel. err | score_ids rel. err | greedy tokens equal "
                  "| tolerance | ok |", "|---|---|---|---:|---:|---|---:|---|"]
        for r in rows:
            lines.append(f"| {r['backend']} | {r['setting']} | {r['kernels']} | {r['forward_rel_err']:.1e} | "
                         f"{r['score_rel_err']:.1e} | {r['greedy_equal']} | {r['tolerance']:.0e} | "
                         f"{'yes' if r['ok'] else '**no**'} |")
        lines.append("")
    for name, err in (eq.get("errors") or {}).items():
        lines.append(f"- {name}: **{err}**")
    return lines


def steps_section(st: dict) -> list[str]:
    lines = [f"### Median training step: {st.get('model')}", "",
             f"Each variant trained one epoch of {st.get('max_batches')} steps through the trainer (validation and "
             "test on their first 200 lines), interleaved rounds, the best median counts. SNT-ASGD averages from "
             "the first step (`asgd_after 0`).", "",
             "| method | optimizer | phase | median step ms | vs dense | with the topology update spread "
             "| peak GPU memory GiB |", "|---|---|---|---:|---:|---:|---:|"]
    for r in (st.get("best") or {}).values():
        lines.append(f"| {r['method']} | {r['optimizer']} | {r['phase']} | {r['step_ms']:.2f} "
                     f"| {pct(r.get('vs_dense'))} "
                     f"| {pct(r.get('vs_dense_with_update'))} | {fmt(r.get('peak_gib'))} |")
    up = st.get("topology_update")
    if up:
        lines += ["", f"One selfish topology update (death rate {up['death_rate']}, the largest): "
                      f"{up['update_ms']:.0f} ms, once per epoch of {st.get('full_epoch_steps')} steps: "
                      f"{st.get('update_ms_per_step', 0):.3f} ms per step."]
    if "overhead" in st:
        lines += ["", f"Masking + averaging + topology update over dense: **{pct(st['overhead'])}** "
                      f"(target <= {100 * st['target']:.0f}%: {'met' if st['target_met'] else '**MISSED**'})."]
    if st.get("quick"):
        lines += ["", "Quick run: a few steps of a tiny model, so these times check the path and mean nothing."]
    if st.get("skipped"):
        lines += ["", "Skipped (time budget): " + ", ".join(st["skipped"]) + "."]
    return lines


def epochs_section(ep: dict, steps: dict | None) -> list[str]:
    lines = [f"### Epochs of `{ep.get('recipe')}` ({ep.get('budget_s', 0) / 60:.1f} min budget)", "",
             f"`python -m selfish_deploy.{ep.get('command', '').split('selfish_deploy.', 1)[-1]}`; "
             f"{ep.get('stopped')}. Start-up (corpus, model, masks) {fmt(ep.get('startup_s'), '.1f')} s.", "",
             "| epoch | train ppl | val ppl | phase | lr | train s | median step ms | wall s (with validation, "
             "checkpoint, update) |", "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in ep.get("epochs") or []:
        lines.append(f"| {r['epoch']} | {r['train_ppl']:.2f} | {r['val_ppl']:.2f} | {r['phase']} | {r['lr']:g} | "
                     f"{r['train_s']:.1f} | {r['step_ms']:.2f} | {r['wall_s']:.1f} |")
    total = ep.get("projected_all_epochs_s")
    if total is not None:
        how = (f"from the logged {ep['projected_from_ms_per_batch']:.0f} ms/batch (no epoch ended in time)"
               if "projected_from_ms_per_batch" in ep else f"{fmt(ep.get('epoch_wall_s'), '.1f')} s per epoch")
        lines += ["", f"Projected time of all {ep.get('planned_epochs')} epochs: **{hms(total)}** ({how}, in the SGD "
                      "phase)."]
        best = (steps or {}).get("best") or {}
        sgd, asgd = best.get("selfish/sgd"), best.get("selfish/snt-asgd")
        if sgd and asgd:
            lines.append(f"Averaging changes the median step by {pct(asgd['step_ms'] / sgd['step_ms'] - 1)} (step "
                         "times above): the epochs after the NT-ASGD trigger take that much more or less.")
    return lines


def inference_section(inf: dict) -> list[str]:
    cases, reps = inf.get("cases") or {}, inf.get("repeats") or {}
    lines = ["### Inference: sparse CSR against dense, one process", "",
             "sparse: SparseLM sparse backend (cuSPARSE on CUDA); dense: SparseLM dense backend (nn.LSTM, cuDNN "
             "on CUDA, dense decoder); raw: that nn.LSTM module called directly on the whole batch. Median ms, "
             f"synchronised after every call; {reps.get('a')} timed generation steps, {reps.get('b')} timed calls "
             "per scoring case.", "",
             "| model | density | case | sparse ms | dense ms | raw nn.LSTM ms | sparse vs dense | sparse vs raw |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in inf.get("rows") or []:
        for k, name in cases.items():
            t = (r.get("times_ms") or {}).get(k, {})
            s, d, w = t.get("sparse"), t.get("dense"), t.get("raw")
            lines.append(f"| {r['arch']} | {r['density']:.2f} | {name} | {fmt(s)} | {fmt(d)} | {fmt(w)} | "
                         f"{fmt(d / s if s and d else None)}x | {fmt(w / s if s and w else None)}x |")
    lines += ["", "'vs' columns: the dense time divided by the sparse one (> 1: sparse is faster).", "",
              "| model | density | sparse kernels | sparse vs dense rel. err | device memory held, sparse MiB "
              "| dense MiB |", "|---|---:|---|---:|---:|---:|"]
    for r in inf.get("rows") or []:
        h = r.get("held_mib") or {}
        lines.append(f"| {r['arch']} | {r['density']:.2f} | {r['kernels']} | {r['sparse_vs_dense_rel_err']:.1e} | "
                     f"{fmt(h.get('sparse'), '.1f')} | {fmt(h.get('dense'), '.1f')} |")
        if r.get("skipped"):
            lines.append(f"\nSkipped (time budget): {', '.join(r['skipped'])}.")
    for name, err in (inf.get("errors") or {}).items():
        lines.append(f"- density {name}: **{err}**")
    return lines


def summary(parts: Path, out: Path, command: str) -> None:
    env = load(parts / "env.json") or {}
    status = {p: load(parts / f"{p}.status.json") for p in PARTS}
    data = {p: load(parts / f"{p}.json") for p in PARTS}
    tests = junit(parts / "tests.xml")
    results = {"env": env, "command": command, "status": status, "tests": tests,
               **{p: d for p, d in data.items() if d is not None}}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")

    device = env.get("device", "?")
    cuda = f", CUDA {env['cuda']}, cuDNN {env['cudnn']}" if env.get("cuda") else ""
    extra = f", driver {env['driver']}, {env.get('gpu_memory_gib')} GiB" if env.get("driver") else ""
    if env:
        lines = [f"## GPU check: {env.get('device_name', '?')} ({device}), {env.get('date_utc', '?')} UTC", "",
                 f"torch {env.get('torch')}{cuda}{extra}, Python {env.get('python')}, host CPU {env.get('cpu')}; "
                 f"commit {env.get('commit', '?')}. Command: `{command}`.", ""]
    else:
        lines = ["## GPU check: device unknown (its environment could not be read: see check.log)", "",
                 f"Command: `{command}`.", ""]
    lines += ["| part | status | seconds | log |", "|---|---|---:|---|"]
    for p in PARTS:
        s = status.get(p)
        seconds = fmt(s.get("seconds") if s else None, ".0f")
        lines.append(f"| {TITLES[p]} | {s['status'] if s else 'not run'} | {seconds} "
                     f"| {LOGS[p] if s else ''} |")
    lines += ["", "### gpu-marked tests (`pytest -m gpu`)", ""]
    if tests:
        lines.append(f"{tests['passed']} passed, {tests['failures'] + tests['errors']} failed, {tests['skipped']} "
                     f"skipped{' (no CUDA: the skips are expected on the CPU)' if device == 'cpu' else ''}.")
        lines += [f"- failed: `{t}`" for t in tests["failed"]]
    else:
        lines.append("No test report (see tests.log).")
    lines.append("")
    if data["equality"]:
        lines += equality_section(data["equality"], device) + [""]
    if data["steps"]:
        lines += steps_section(data["steps"]) + [""]
    if data["epochs"]:
        lines += epochs_section(data["epochs"], data["steps"]) + [""]
    if data["inference"]:
        lines += inference_section(data["inference"]) + [""]
    (out / "summary.md").write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("env", help="write the environment record (device name, date, versions)")
    e.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    e.add_argument("--commit", default="?", help="the working tree's commit, for the record")
    e.add_argument("--out", type=Path, required=True, help="JSON file to write")
    s = sub.add_parser("summary", help="write OUT/summary.md and OUT/results.json from the parts' files")
    s.add_argument("--parts", type=Path, required=True, help="the parts' directory")
    s.add_argument("--out", type=Path, required=True, help="the output directory")
    s.add_argument("--command", default="", help="the gpu_check.sh command line, for the record")
    args = p.parse_args(argv)
    if args.what == "env":
        import torch

        from gpu_common import environment, write_json

        write_json(args.out, {**environment(torch.device(args.device)), "commit": args.commit})
        return 0
    summary(args.parts, args.out, args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
