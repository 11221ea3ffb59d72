"""benchmarks/gpu_check.sh (issue 16's GPU check) on the CPU: its dry run on tiny settings and its parts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts run as python benchmarks/NAME.py and import each other by name
SCRIPT = BENCH / "gpu_check.sh"
ALLOWED = {"summary.md", "results.json", "check.log", "tests.log", "equality.log", "train.log", "inference.log"}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models; no OpenMP spinning on a busy machine


def check(out: Path, *args: str, data_dir: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--data-dir", str(data_dir)] if data_dir else []
    return subprocess.run(["bash", str(SCRIPT), str(out), *args, *extra, "--python", sys.executable],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def test_bad_input_is_exit_2_with_a_message(tmp_path, data_dir):
    bad = check(tmp_path / "a", "--device", "tpu", data_dir=data_dir)
    assert bad.returncode == 2 and "--device must be" in bad.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("x")
    busy = check(tmp_path / "full", "--device", "cpu", data_dir=data_dir)
    assert busy.returncode == 2 and "is not empty" in busy.stderr
    assert check(tmp_path / "b", "--minutes", "soon", data_dir=data_dir).returncode == 2
    only = check(tmp_path / "b", "--only", "tests,benchmarks", data_dir=data_dir)
    assert only.returncode == 2 and "unknown part benchmarks" in only.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_dry_run_writes_summary_metrics_and_logs_only(tmp_path, data_dir):
    out = tmp_path / "out"
    proc = check(out, "--device", "cpu", "--quick", "--only", "setup,equality,inference", data_dir=data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert files <= ALLOWED and {"summary.md", "results.json", "check.log"} <= files  # no checkpoint, <= 8 files
    res = json.loads((out / "results.json").read_text())
    assert res["env"]["device"] == "cpu" and res["env"]["device_name"] and res["env"]["torch"]
    assert {p: (s or {}).get("status") for p, s in res["status"].items()} == {
        "setup": "ok", "equality": "ok", "inference": "ok", "tests": None, "steps": None, "epochs": None}

    eq = res["equality"]
    assert not eq["errors"] and [r["setting"] for r in eq["training_step"]] == ["defaults"]
    step = eq["training_step"][0]
    assert step["ok"] and step["masks_equal"] and step["weights_rel_err"] == 0.0  # CPU against CPU: bit for bit
    assert [r["backend"] for r in eq["runtime_logprobs"]] == ["sparse on cpu", "dense on cpu"]
    assert all(r["ok"] and r["greedy_equal"] and r["forward_rel_err"] < 1e-5 for r in eq["runtime_logprobs"])

    inf = res["inference"]
    assert [round(r["density"], 2) for r in inf["rows"]] == [0.33, 0.1] and not inf["errors"]
    summary = (out / "summary.md").read_text()
    for r in inf["rows"]:
        assert r["sparse_vs_dense_rel_err"] < 1e-5
        for case, name in inf["cases"].items():
            t = r["times_ms"][case]
            assert set(t) == {"sparse", "dense", "raw"} and all(v > 0 for v in t.values())
            assert (f"| {r['arch']} | {r['density']:.2f} | {name} | {t['sparse']:.2f} | {t['dense']:.2f} | "
                    f"{t['raw']:.2f} | {t['dense'] / t['sparse']:.2f}x |") in summary
    assert res["env"]["device_name"] in summary.splitlines()[0]
    assert "| CPU vs device equality | ok |" in summary and "| epoch loop | not run | - |  |" in summary
    assert "0.0e+00" in summary and "| sparse on cpu | defaults |" in summary


def test_step_bench_times_the_three_variants_and_the_update(tmp_path, data_dir):
    import gpu_train_bench

    out = tmp_path / "steps.json"
    rc = gpu_train_bench.main(["steps", "--device", "cpu", "--data-dir", str(data_dir), "--work", str(tmp_path / "w"),
                               "--out-json", str(out), "--quick", "--max-batches", "3", "--rounds", "1"])
    res = json.loads(out.read_text())
    assert rc == 0
    assert [(r["method"], r["optimizer"], r["phase"], r["steps"]) for r in res["runs"]] == [
        ("dense", "sgd", "sgd", 3), ("selfish", "sgd", "sgd", 3), ("selfish", "snt-asgd", "asgd", 3)]
    assert res["topology_update"]["update_ms"] > 0 and res["topology_update"]["death_rate"] == 0.8
    assert res["full_epoch_steps"] == len(range(0, 44328 // 20 - 1, 35))  # ptb-tiny: 44,328 training tokens
    full = res["best"]["selfish/snt-asgd"]
    dense = res["best"]["dense/sgd"]["step_ms"]
    want = (full["step_ms"] + res["topology_update"]["update_ms"] / res["full_epoch_steps"]) / dense - 1
    assert math.isclose(res["overhead"], want) and res["target_met"] == (want <= 0.10)


def test_epoch_loop_stops_within_its_budget(tmp_path, data_dir):
    import gpu_train_bench

    out, budget_s = tmp_path / "epochs.json", 15.0
    t0 = time.monotonic()
    gpu_train_bench.main(["epochs", "--device", "cpu", "--data-dir", str(data_dir), "--work", str(tmp_path / "w"),
                          "--out-json", str(out), "--quick", "--epochs", "100", "--minutes", str(budget_s / 60),
                          "--log", str(tmp_path / "train.log")])
    elapsed = time.monotonic() - t0
    res = json.loads(out.read_text())
    assert elapsed < budget_s + 30  # the trainer is stopped, not waited for (100 epochs would take minutes)
    assert res["stopped"].startswith("stopped after") and res["returncode"] != 0
    assert [r["epoch"] for r in res["epochs"]] == list(range(1, len(res["epochs"]) + 1)) and len(res["epochs"]) < 100
    assert all(math.isfinite(r["val_ppl"]) and r["wall_s"] > 0 for r in res["epochs"])
    # the projection covers all 100 planned epochs: more than what ran
    assert res["projected_all_epochs_s"] > sum(r["wall_s"] for r in res["epochs"])
    assert "ms/batch" in (tmp_path / "train.log").read_text()


def test_summary_reports_failed_and_skipped_parts_and_failed_tests(tmp_path):
    import gpu_summary

    parts, out = tmp_path / "parts", tmp_path / "out"
    parts.mkdir()
    out.mkdir()
    (parts / "env.json").write_text(json.dumps({"device": "cuda", "device_name": "NVIDIA H200", "torch": "2.11.0",
                                                "date_utc": "2026-12-01 10:00", "cuda": "13.0", "cudnn": 91000}))
    for name, status, rc in (("tests", "failed (exit 1)", 1), ("steps", "timed out after 170s", 124),
                             ("epochs", "skipped: no time left", "null")):
        (parts / f"{name}.status.json").write_text(
            f'{{"part": "{name}", "status": "{status}", "rc": {rc}, "seconds": 12}}')
    (parts / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_runtime" name="test_cuda_sparse_equals_cpu"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_methods" name="test_a"/>'
        '<testcase classname="tests.test_methods" name="test_b"><skipped/></testcase></testsuite></testsuites>')
    gpu_summary.summary(parts, out, "benchmarks/gpu_check.sh OUT --device cuda")
    text = (out / "summary.md").read_text()
    assert text.startswith("## GPU check: NVIDIA H200 (cuda), 2026-12-01 10:00 UTC")
    assert "| gpu-marked tests | failed (exit 1) | 12 | tests.log |" in text
    assert "| median step time | timed out after 170s | 12 | train.log |" in text
    assert "| epoch loop | skipped: no time left |" in text and "| inference | not run | - |  |" in text
    assert "1 passed, 1 failed, 1 skipped." in text and "## GPU check: device unknown" not in text
    assert "- failed: `tests.test_runtime::test_cuda_sparse_equals_cpu`" in text
    res = json.loads((out / "results.json").read_text())
    assert res["tests"]["failed"] == ["tests.test_runtime::test_cuda_sparse_equals_cpu"]
    assert res["status"]["epochs"]["rc"] is None


def test_summary_without_an_environment_says_so(tmp_path):
    import gpu_summary

    (tmp_path / "parts").mkdir()
    gpu_summary.summary(tmp_path / "parts", tmp_path, "cmd")
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("## GPU check: device unknown") and "| install check | not run | - |  |" in text
    assert json.loads((tmp_path / "results.json").read_text())["tests"] is None
