"""Behaviour under load over real HTTP: concurrent = sequential (batched scoring, continuous batching, seeded
sampling included), a full queue is 429 with Retry-After, a client that leaves has its sequence dropped,
timeouts are 504, graceful shutdown finishes in-flight requests, /health is 503 while the model loads."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from selfish_deploy.runtime import SparseLM
from selfish_deploy.serving.app import create_app
from selfish_deploy.serving.config import ServeConfig
from selfish_deploy.serving.live import LiveServer

TEXTS = ["the company said", "shares rose in new york", "the market fell sharply", "it expects higher sales",
         "the N years old", "we are not"]


@pytest.fixture(scope="module")
def lm(tiny_export):
    return SparseLM.load(tiny_export)


def requests_mix(n: int) -> list[tuple[str, dict]]:
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(("/v1/score", {"text": TEXTS[i % len(TEXTS)]}))
        elif i % 3 == 1:
            out.append(("/v1/generate", {"prompt": TEXTS[i % len(TEXTS)], "max_new_tokens": 6 + i % 11,
                                         "temperature": 0.9, "top_k": 50, "seed": i}))
        else:
            out.append(("/v1/completions", {"prompt": TEXTS[i % len(TEXTS)], "max_tokens": 4 + i % 7,
                                            "seed": 100 + i, "logprobs": 1, "echo": i % 2 == 0}))
    return out


def strip(path: str, body: dict) -> dict:
    if path == "/v1/completions":  # ids and timestamps differ per request
        return {"choices": body["choices"], "usage": body["usage"]}
    return body


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_32_concurrent_clients_get_the_sequential_answers(lm):
    reqs = requests_mix(32)
    with LiveServer(create_app(lm, "tiny")) as server:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            sequential = []
            for path, body in reqs:
                r = c.post(path, json=body)
                assert r.status_code == 200, r.text
                sequential.append(strip(path, r.json()))
            before = c.get("/metrics").text

        async def all_at_once():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as ac:
                return await asyncio.gather(*(ac.post(p, json=b) for p, b in reqs))

        answers = asyncio.run(all_at_once())
        assert [r.status_code for r in answers] == [200] * len(reqs)
        concurrent = [strip(p, r.json()) for (p, _), r in zip(reqs, answers)]
        for (path, _), a, b in zip(reqs, concurrent, sequential):
            if path == "/v1/completions":
                assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
            assert a == b  # bit for bit: scoring, seeded generation and its log-probabilities
        after = httpx.get(server.url + "/metrics").text
    # the concurrent round really was batched: some engine calls took more than one sequence
    for kind in ("generate", "score"):
        calls = metric(after, "selfish:batch_size_count", kind=kind) - metric(before, "selfish:batch_size_count",
                                                                              kind=kind)
        singles = (metric(after, "selfish:batch_size_bucket", kind=kind, le="1.0")
                   - metric(before, "selfish:batch_size_bucket", kind=kind, le="1.0"))
        assert calls > singles, kind
    assert metric(after, "selfish:generation_tokens_total") > 0
    assert metric(after, "selfish:time_to_first_token_seconds_count") > 0
    assert metric(after, "selfish:http_requests_total", route="/v1/generate", status="200") == 22


def wait_for(predicate, timeout=20.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "condition not reached"
        time.sleep(0.02)


def test_queue_full_429_and_disconnect_cancels(lm):
    config = ServeConfig(model_name="tiny", max_running=1, max_queue=2, max_new_tokens=10**6, retry_after_s=3)
    long = {"prompt": "the", "max_new_tokens": 10**6, "temperature": 1.0, "stream": True}
    with LiveServer(create_app(lm, config=config)) as server:
        app = server.server.config.app
        worker = app.state.worker
        with httpx.Client(base_url=server.url, timeout=60) as c:
            with c.stream("POST", "/v1/generate", json=long) as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # kept: a dropped iterator would close the connection
                next(lines)  # it is generating
                wait_for(lambda: worker.running == 1)
                results = []

                def call():
                    results.append(httpx.post(server.url + "/v1/score", json={"text": "the"}, timeout=60))

                # two more wait in the queue: generation has no room and the worker is busy stepping
                waiting = [threading.Thread(target=lambda: results.append(
                    httpx.post(server.url + "/v1/generate", json={"prompt": "a", "max_new_tokens": 2},
                               timeout=60))) for _ in range(2)]
                for t in waiting:
                    t.start()
                wait_for(lambda: worker.waiting == 2)
                r = c.post("/v1/score", json={"text": "the"})
                assert r.status_code == 429 and r.headers["retry-after"] == "3"
                assert r.json()["type"] == "overloaded"
            # the first client went away: its sequence leaves the batch and the queued ones run
            for t in waiting:
                t.join(30)
            assert [x.status_code for x in results] == [200, 200]
            wait_for(lambda: worker.running == 0)
            call()
            assert results[-1].status_code == 200
            assert metric(c.get("/metrics").text, "selfish:requests_rejected_total") == 1


def test_timeout_is_504_and_the_work_is_dropped(lm):
    config = ServeConfig(model_name="tiny", max_new_tokens=10**6, request_timeout_s=0.5)
    with LiveServer(create_app(lm, config=config)) as server:
        r = httpx.post(server.url + "/v1/generate", json={"prompt": "the", "max_new_tokens": 10**6}, timeout=30)
        assert r.status_code == 504 and r.json()["type"] == "timeout"
        worker = server.server.config.app.state.worker
        wait_for(lambda: worker.running == 0)
        assert httpx.get(server.url + "/health").status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(lm):
    server = LiveServer(create_app(lm, "tiny")).__enter__()
    out = []
    req = threading.Thread(target=lambda: out.append(httpx.post(
        server.url + "/v1/generate", json={"prompt": "the", "max_new_tokens": 400, "seed": 1}, timeout=60)))
    req.start()
    wait_for(lambda: server.server.config.app.state.worker.running == 1)
    server.__exit__(None, None, None)  # asks uvicorn to stop while the request is generating
    req.join(30)
    assert out and out[0].status_code == 200 and len(out[0].json()["tokens"]) == 400
    assert not server.thread.is_alive()


def test_health_is_503_while_the_model_loads(tiny_export):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return SparseLM.load(tiny_export)

    with LiveServer(create_app(slow_load, "tiny")) as server:
        r = httpx.get(server.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.post(server.url + "/v1/score", json={"text": "the"})
        assert r.status_code == 503 and r.json()["type"] == "unavailable"
        release.set()
        wait_for(lambda: httpx.get(server.url + "/health").status_code == 200)
        assert httpx.post(server.url + "/v1/score", json={"text": "the"}).status_code == 200


def test_failed_load_is_reported_by_health(tmp_path):
    def broken():
        return SparseLM.load(tmp_path / "missing")

    with LiveServer(create_app(broken, "tiny")) as server:
        wait_for(lambda: httpx.get(server.url + "/health").json()["status"] != "loading")
        r = httpx.get(server.url + "/health")
        assert r.status_code == 503 and "not found" in r.json()["status"]


def test_a_client_that_leaves_a_plain_request_has_its_work_dropped(lm):
    config = ServeConfig(model_name="tiny", max_new_tokens=10**6)
    with LiveServer(create_app(lm, config=config)) as server:
        worker = server.server.config.app.state.worker
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(server.url + "/v1/completions", json={"prompt": "the", "max_tokens": 10**6}, timeout=1.0)
        wait_for(lambda: worker.running == 0, timeout=10)
        assert httpx.get(server.url + "/health").status_code == 200
