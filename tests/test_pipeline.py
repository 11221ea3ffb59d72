"""The whole chain through the real commands: train -> export -> serve (a real uvicorn process) -> score."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

from selfish_deploy.csr import CSR
from selfish_deploy.exportdir import load_export
from selfish_deploy.rundir import load_run
from selfish_deploy.runtime import SparseLM
from selfish_deploy.training import allocator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_export_round_trip_gives_identical_logits(tiny_run, tiny_export):
    run, exported = load_run(tiny_run), load_export(tiny_export)
    for name, mask in run.masks.items():  # CSR holds exactly the masked weights
        csr = exported.sparse[name]
        assert csr.nnz == int(mask.sum()) and torch.equal(csr.mask(), mask)
        assert torch.equal(csr.to_dense(), run.weights[name])
        assert csr.crow_indices.dtype == torch.int32 and csr.col_indices.dtype == torch.uint16
    model, lm = run.build_model(), SparseLM(exported)
    torch.manual_seed(0)
    tokens = torch.randint(0, len(run.vocab), (9, 4))
    logits, _ = model(tokens, model.init_hidden(4))
    ref = torch.log_softmax(logits, -1)
    out, _ = lm.forward(tokens, lm.init_state(4))
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_csr_keeps_alive_zeros():
    w = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    mask = torch.tensor([[True, True, False], [False, False, True]])  # (0,0) alive but zero
    csr = CSR.from_masked(w, mask)
    assert csr.crow_indices.tolist() == [0, 2, 3] and csr.col_indices.tolist() == [0, 1, 2]
    assert csr.values.tolist() == [0.0, 2.0, 3.0]
    assert torch.equal(csr.mask(), mask) and torch.equal(csr.to_dense(), w)


def test_cli_chain_train_export_serve_score(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = os.path.dirname(sys.executable)
    run, export = tmp_path / "run", tmp_path / "export"
    trained = subprocess.run([f"{bin_dir}/selfish-train", "--data-dir", str(data_dir), "--corpus", "ptb-tiny",
                              "--hidden", "16", "--emb", "16", "--epochs", "1", "--density", "0.25", "--out", str(run)],
                             check=True, env=env, capture_output=True, text=True)
    if allocator.users_choice() is None:  # the command restarted itself with glibc's thread cache off
        assert "allocator: large buffers kept on the heap, never trimmed; glibc's thread cache off" in trained.stderr
    subprocess.run([f"{bin_dir}/selfish-export", str(run), "--out", str(export)], check=True, env=env)
    port = free_port()
    server = subprocess.Popen([f"{bin_dir}/selfish-serve", "--model", str(export), "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not come up: " + server.stdout.read1().decode())
        r = httpx.post(f"{url}/v1/score", json={"text": "the market fell"}, timeout=30)
        assert r.status_code == 200
        expected = SparseLM.load(export).score("the market fell")
        assert r.json()["tokens"] == ["the", "market", "fell", "<eos>"]
        assert r.json()["logprobs"] == pytest.approx(expected.logprobs, rel=1e-6)
        bad = httpx.post(f"{url}/v1/generate", json={"prompt": "the", "max_new_tokens": 10**9}, timeout=30)
        assert bad.status_code == 422 and "max_new_tokens" in bad.json()["error"]
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # still serving
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("argv,fragment", [
    (["selfish-export", "/nonexistent", "--out", "/tmp/x"], "run directory not found"),
    (["selfish-serve", "--model", "/nonexistent"], "export directory not found"),
    (["selfish-inspect", "/nonexistent"], "export directory not found"),
])
def test_cli_missing_directories_exit_2(argv, fragment):
    bin_dir = os.path.dirname(sys.executable)
    p = subprocess.run([f"{bin_dir}/{argv[0]}", *argv[1:]], capture_output=True, text=True)
    assert p.returncode == 2
    assert fragment in p.stderr and "Traceback" not in p.stderr


def test_corrupt_export_exits_2(tiny_export, tmp_path):
    from selfish_deploy.serving.cli import main

    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_export.iterdir():
        if f.is_file():  # plots/ is not needed to load
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert main(["--model", str(broken)]) == 2
    (broken / "config.json").write_text("{not json")
    assert main(["--model", str(broken)]) == 2


def test_serving_never_imports_training():
    code = ("import sys, selfish_deploy.serving.app, selfish_deploy.serving.cli, selfish_deploy.runtime;"
            "bad = [m for m in sys.modules if m.startswith('selfish_deploy.training')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
