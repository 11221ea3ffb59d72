"""Load on ``selfish-serve`` over loopback: throughput, latency, time to first token, batch sizes, memory.

    python benchmarks/serve_load.py [--clients 16 64] [--duration 60] [--mixes score generate both]
                                    [--models bundled reference-0.1] [--write-results] [--json FILE]

Per model, the server runs twice in a fresh process, batching on and off (``--no-batching``); each run does
every clients x mix cell in turn. Clients are closed-loop (each sends its next request when the last one is
answered), so the load is bounded by the client count. The mixes: ``score`` (one 20-word text per request),
``generate`` (16 tokens, streamed, so the time to first token is measured at the client) and ``both`` (half
each, in a seeded random order). Texts are random words of the model's vocabulary (``/detokenize``).
Batch sizes come from the server's ``selfish:batch_size`` histogram; resident memory from ``/proc``: after
loading, after a warm-up, and at the end (the target is growth under 10 % after the warm-up).

Models: the bundled one, and the reference model (2x650 LSTM, vocabulary 10,000, random masks; as in
inference.py) at density 0.1, exported into ``--work`` on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SECTION = "## Serving under load"
GEN_TOKENS = 16
SCORE_WORDS = 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def model_dir(name: str, work: Path) -> str:
    if name == "bundled":
        from selfish_deploy.assets import default_model_dir

        return str(default_model_dir())
    m = re.fullmatch(r"reference-([0-9.]+)", name)
    if not m:
        raise SystemExit(f"unknown model {name!r}: bundled or reference-DENSITY")
    out = work / name
    if not (out / "config.json").is_file():
        sys.path.insert(0, str(HERE))
        from export_size import write_reference_run

        from selfish_deploy.export.writer import export_run

        export_run(write_reference_run(work / f"run-{m.group(1)}", float(m.group(1))), out, "fp32")
    return str(out)


class Server:
    """``selfish-serve`` in a subprocess on a free port."""

    def __init__(self, model: str, batching: bool, threads: int | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "selfish_deploy.serving.cli", "--model", model, "--port", str(self.port),
               "--max-queue", "4096", "--request-timeout", "600"]
        cmd += [] if batching else ["--no-batching"]
        cmd += ["--threads", str(threads)] if threads else []
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> "Server":
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise SystemExit("the server did not become healthy")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(60)

    def batch_sizes(self) -> dict[str, dict[str, float]]:
        """Cumulative ``selfish:batch_size`` buckets per kind: {kind: {le: count}} plus sum and count."""
        out: dict[str, dict[str, float]] = {}
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            m = re.match(r'selfish:batch_size_(bucket|sum|count)\{(.*)\} (\S+)', line)
            if m:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                key = labels.get("le", m.group(1)) if m.group(1) == "bucket" else m.group(1)
                out.setdefault(labels["kind"], {})[key] = float(m.group(3))
        return out


def batch_summary(before: dict, after: dict) -> dict[str, dict]:
    """Per kind: calls, mean sequences per call, and the share of calls per bucket in this cell."""
    out = {}
    for kind, a in after.items():
        b = before.get(kind, {})
        calls = a.get("count", 0) - b.get("count", 0)
        if calls <= 0:
            continue
        total = a.get("sum", 0) - b.get("sum", 0)
        edges = sorted((k for k in a if k not in ("sum", "count")), key=lambda k: float(k))
        dist, prev = {}, 0.0
        for le in edges:
            cum = a[le] - b.get(le, 0)
            if cum - prev > 0:
                dist[f"<={float(le):g}"] = round((cum - prev) / calls, 3)
            prev = cum
        out[kind] = {"calls": int(calls), "mean": round(total / calls, 2), "distribution": dist}
    return out


def texts(url: str, n: int, seed: int) -> list[str]:
    vocab = httpx.get(url + "/tokenizer_info", timeout=30).json()
    rng = random.Random(seed)
    special = {vocab["eos_token_id"], vocab.get("unk_token_id")}
    ids = [i for i in range(vocab["vocab_size"]) if i not in special]
    out = []
    for _ in range(n):
        words = rng.sample(ids, SCORE_WORDS)
        out.append(httpx.post(url + "/detokenize", json={"tokens": words}, timeout=30).json()["prompt"])
    return out


async def one(client: httpx.AsyncClient, kind: str, text: str, seed: int) -> dict:
    t0 = time.perf_counter()
    if kind == "score":
        r = await client.post("/v1/score", json={"text": text})
        return {"kind": kind, "status": r.status_code, "latency": time.perf_counter() - t0, "ttft": None}
    body = {"prompt": " ".join(text.split()[:5]), "max_new_tokens": GEN_TOKENS, "temperature": 0.9, "seed": seed,
            "stream": True}
    ttft, status = None, None
    async with client.stream("POST", "/v1/generate", json=body) as r:
        status = r.status_code
        async for line in r.aiter_lines():
            if line.startswith("event: token") and ttft is None:
                ttft = time.perf_counter() - t0
    return {"kind": kind, "status": status, "latency": time.perf_counter() - t0, "ttft": ttft}


async def load(url: str, clients: int, duration: float, mix: str, pool: list[str], seed: int
               ) -> tuple[list[dict], float]:
    """``clients`` closed-loop clients for ``duration`` seconds, each on its own connection, opened (and used
    once, untimed) before the clock starts, so connection set-up is not in the latencies. One shared
    ``httpx.AsyncClient`` would scan its whole pool on every request (httpcore's
    ``_assign_requests_to_connections``): at 64 connections that cost the client more CPU than the server used,
    and the client became the bottleneck it was meant to measure."""
    rng = random.Random(seed)
    results: list[dict] = []
    ready = asyncio.Barrier(clients)
    clock: dict[str, float] = {}  # "start": when the first client passed the barrier

    async def client_loop(k: int):
        n = 0
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=1)) as c:
            await one(c, "score", pool[k % len(pool)], seed)  # opens the connection
            await ready.wait()
            start = clock.setdefault("start", time.perf_counter())
            while time.perf_counter() < start + duration:
                kind = mix if mix != "both" else rng.choice(("score", "generate"))
                try:
                    results.append(await one(c, kind, rng.choice(pool), seed + 1000 * k + n))
                except httpx.HTTPError as e:
                    results.append({"kind": kind, "status": type(e).__name__, "latency": None, "ttft": None})
                n += 1

    await asyncio.gather(*(client_loop(k) for k in range(clients)))
    return results, time.perf_counter() - clock["start"]  # results and the seconds they took


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarize(results: list[dict], duration: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    lat = [r["latency"] for r in ok]
    score = [r["latency"] for r in ok if r["kind"] == "score"]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
    return {"requests": len(results), "errors": len(results) - len(ok), "rps": round(len(ok) / duration, 2),
            "p50_ms": ms(pct(lat, 0.5)), "p99_ms": ms(pct(lat, 0.99)), "score_p99_ms": ms(pct(score, 0.99)),
            "ttft_p50_ms": ms(pct(ttft, 0.5)), "ttft_p99_ms": ms(pct(ttft, 0.99)),
            "mean_ms": ms(statistics.fmean(lat)) if lat else None}


def run_model(name: str, path: str, args) -> list[dict]:
    rows = []
    for batching in args.batching:
        with Server(path, batching == "on", args.threads) as server:
            rss_loaded = rss_mib(server.proc.pid)
            pool = texts(server.url, 200, args.seed)
            asyncio.run(load(server.url, max(args.clients), args.warmup, "both", pool, args.seed))  # warm-up
            rss_warm = rss_mib(server.proc.pid)
            for clients in args.clients:
                for mix in args.mixes:
                    before = server.batch_sizes()
                    cpu0, mine0 = cpu_seconds(server.proc.pid), time.process_time()
                    res, elapsed = asyncio.run(load(server.url, clients, args.duration, mix, pool, args.seed))
                    cpu = {"server": round((cpu_seconds(server.proc.pid) - cpu0) / elapsed, 2),
                           "client": round((time.process_time() - mine0) / elapsed, 2)}
                    row = {"model": name, "batching": batching, "clients": clients, "mix": mix,
                           **summarize(res, elapsed), "batches": batch_summary(before, server.batch_sizes()),
                           "cpu_cores": cpu,
                           "rss_loaded_mib": round(rss_loaded, 1), "rss_warm_mib": round(rss_warm, 1),
                           "rss_end_mib": round(rss_mib(server.proc.pid), 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| model | batching | clients | mix | req/s | p50 ms | p99 ms | score p99 ms | TTFT p50 ms | errors | "
            "mean batch (score / gen) | CPU cores (server / client) | RSS loaded -> warm -> end MiB |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        mean = " / ".join(str(r["batches"].get(k, {}).get("mean", "-")) for k in ("score", "generate"))
        lines.append(f"| {r['model']} | {r['batching']} | {r['clients']} | {r['mix']} | {r['rps']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['score_p99_ms'] or '-'} | {r['ttft_p50_ms'] or '-'} | {r['errors']} | "
                     f"{mean} | {r['cpu_cores']['server']} / {r['cpu_cores']['client']} | "
                     f"{r['rss_loaded_mib']:.0f} -> {r['rss_warm_mib']:.0f} -> {r['rss_end_mib']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["bundled", "reference-0.1"], help="bundled, reference-DENSITY")
    ap.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="concurrent closed-loop clients")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per clients x mix cell")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of mixed load before measuring")
    ap.add_argument("--mixes", nargs="+", default=["score", "generate", "both"], choices=["score", "generate", "both"])
    ap.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--threads", type=int, help="engine threads (default: PyTorch's)")
    ap.add_argument("--seed", type=int, default=0, help="texts, mix order and sampling seeds")
    ap.add_argument("--work", type=Path, default=Path("/tmp/selfish-serve-bench"), help="reference exports")
    ap.add_argument("--write-results", action="store_true", help=f"replace '{SECTION}' in benchmarks/RESULTS.md")
    ap.add_argument("--json", type=Path, help="also write every row as JSON")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE))
    from common import machine, replace_section

    rows = []
    for name in args.models:
        rows += run_model(name, model_dir(name, args.work), args)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"{SECTION}\n\n### {when}, {machine()}\n\n`python benchmarks/serve_load.py --duration "
            f"{args.duration:g} --clients {' '.join(map(str, args.clients))}`: closed-loop clients on loopback, "
            f"scoring = one {SCORE_WORDS}-word text, generation = {GEN_TOKENS} tokens streamed; one connection per "
            "client, opened before the clock starts; latency of the whole request, TTFT at the client; mean batch "
            "= sequences per engine call (server histogram); CPU cores = CPU seconds per second of the server "
            "process and of the load generator.\n\n"
            + table(rows) + "\n")
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write_results:
        replace_section(RESULTS, SECTION, text)


if __name__ == "__main__":
    main()
