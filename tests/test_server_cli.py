"""``selfish-serve`` as a process: settings from the environment, API key, SIGTERM shutdown, bad flags exit 2."""

from __future__ import annotations

import json
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
    assert code == 0  # a graceful SIGTERM shutdown is a clean exit (uvicorn's re-raised signal is ours)
    assert "inference worker stopped" in proc.stdout.read()


def wait_healthy(proc: subprocess.Popen, url: str, log) -> None:
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.time() < deadline, log.read_text()
        time.sleep(0.2)


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(tmp_path):
    """The bundled model streams 1000 tokens (about a second); SIGTERM after the first: the listener closes (new connections
    refused), the stream still ends with all its tokens, the worker stops, the exit status is 0."""
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "selfish_deploy.serving.cli", "--port", str(port),
                                 "--threads", "1"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, log)
        body = {"prompt": "the", "max_new_tokens": 1000, "temperature": 1.0, "seed": 3, "stream": True}
        with httpx.stream("POST", url + "/v1/generate", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines) == "event: token"  # generation has started: the request is in flight
            proc.send_signal(signal.SIGTERM)
            refused_at = None
            deadline = time.time() + 10
            while refused_at is None and time.time() < deadline:
                try:
                    httpx.get(url + "/health", timeout=1)
                    time.sleep(0.02)
                except httpx.TransportError:
                    refused_at = time.time()
            assert refused_at is not None, "the server kept accepting connections after SIGTERM"
            rest = list(lines)
        events = [json.loads(x[len("data: "):]) for x, kind in zip(rest[1:], rest) if kind == "event: done"]
        assert len(events) == 1 and events[0]["finish_reason"] == "length"
        assert len(events[0]["tokens"]) == 1000
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "Waiting for connections to close" in text  # uvicorn's: the stream was still being answered
    assert "inference worker stopped" in text and "Traceback" not in text


def test_bad_settings_exit_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["--max-queue", "0"]) == 2
    assert "max_queue must be > 0" in capsys.readouterr().err
    assert main(["--port", "0"]) == 2
