"""``selfish-serve`` as a process: settings from the environment, API key, SIGTERM shutdown, bad flags exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from selfish_deploy.serving.cli import main
from selfish_deploy.serving.live import free_port


def test_serve_process_reads_env_and_stops_on_sigterm(tiny_export):
    port = free_port()
    env = {**os.environ, "SELFISH_API_KEY": "k3y", "SELFISH_MAX_NEW_TOKENS": "7", "SELFISH_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "selfish_deploy.serving.cli", "--model", str(tiny_export),
                             "--model-name", "tiny", "--threads", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline
            time.sleep(0.2)
        assert httpx.post(url + "/v1/score", json={"text": "the"}).status_code == 401
        key = {"Authorization": "Bearer k3y"}
        info = httpx.get(url + "/info", headers=key).json()
        assert info["limits"]["max_new_tokens"] == 7 and info["threads"] == 1 and info["model"] == "tiny"
        r = httpx.post(url + "/v1/generate", json={"prompt": "the", "max_new_tokens": 8}, headers=key)
        assert r.status_code == 422 and "at most 7" in r.json()["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    # uvicorn shuts down gracefully, then re-raises the signal, so the exit status is SIGTERM's
    assert code in (0, -signal.SIGTERM)
    assert "inference worker stopped" in proc.stdout.read()


def test_bad_settings_exit_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--max-queue", "0"]) == 2
    assert "max_queue must be > 0" in capsys.readouterr().err
    assert main(["--port", "0"]) == 2
