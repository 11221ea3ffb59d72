"""``make demo``: start the server on the bundled model, send one scoring and one generation request,
print both answers and stop the server."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time

import httpx

from selfish_deploy import cli
from selfish_deploy.errors import UserError

log = logging.getLogger("selfish_deploy.demo")

SCORE = {"text": "the company said its profit rose sharply in the third quarter"}
GENERATE = {"prompt": "the stock market", "max_new_tokens": 25, "temperature": 0.8, "top_k": 40, "seed": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> dict:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            raise UserError(f"the server exited with code {server.returncode} before answering")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise UserError(f"the server did not answer {url}/health within {timeout_s:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfish-demo", description="Serve the bundled (or given) model, show one "
                                "scoring and one generation request, then stop.")
    p.add_argument("--model", help="export directory (default: the bundled sparse PTB model)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def body(args: argparse.Namespace) -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "selfish_deploy.serving.cli", "--port", str(port)]
    if args.model:
        cmd += ["--model", args.model]
    log.info("starting: %s", " ".join(cmd))
    server = subprocess.Popen(cmd, env=os.environ.copy())
    try:
        health = wait_healthy(url, server)
        log.info("GET /health -> %s", json.dumps(health))
        score = httpx.post(f"{url}/v1/score", json=SCORE, timeout=60).json()
        log.info("POST /v1/score %s", json.dumps(SCORE))
        sys.stdout.write(f"\n== score ==\ntext:       {SCORE['text']}\ntokens:     {' '.join(score['tokens'])}\n"
                         f"logprobs:   {' '.join(f'{x:.2f}' for x in score['logprobs'])}\n"
                         f"log-lik.:   {score['log_likelihood']:.3f}\nperplexity: {score['perplexity']:.2f}\n")
        gen = httpx.post(f"{url}/v1/generate", json=GENERATE, timeout=60).json()
        log.info("POST /v1/generate %s", json.dumps(GENERATE))
        sys.stdout.write(f"\n== generate ==\nprompt:     {GENERATE['prompt']}\ncontinued:  {gen['text']}\n\n")
        sys.stdout.flush()
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.info("server stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(body, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
