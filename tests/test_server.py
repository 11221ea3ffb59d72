"""The HTTP API: endpoint answers checked against the runtime, and bad input answered with 422."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient

from selfish_deploy.runtime import SparseLM
from selfish_deploy.serving.app import create_app
from selfish_deploy.serving.schemas import MAX_NEW_TOKENS


@pytest.fixture(scope="module")
def lm(tiny_export):
    return SparseLM.load(tiny_export)


@pytest.fixture(scope="module")
def client(lm):
    with TestClient(create_app(lm, "tiny")) as c:
        yield c


def test_health(client, lm):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["vocab_size"] == len(lm.vocab) and body["arch"] == "lstm"
    assert 0.29 < body["density"] < 0.31


def test_score_matches_runtime_and_dense_model(client, lm, tiny_run):
    from selfish_deploy.rundir import load_run

    text = "the company said it expects higher sales\nshares rose"
    r = client.post("/v1/score", json={"text": text})
    assert r.status_code == 200, r.text
    body = r.json()
    words = text.split("\n")
    assert body["tokens"] == words[0].split() + ["<eos>"] + words[1].split() + ["<eos>"]
    assert len(body["logprobs"]) == len(body["tokens"])
    assert all(lp <= 0 for lp in body["logprobs"])
    assert math.isclose(body["log_likelihood"], sum(body["logprobs"]), rel_tol=1e-9)
    assert math.isclose(body["perplexity"], math.exp(-body["log_likelihood"] / len(body["tokens"])), rel_tol=1e-9)
    # Same numbers from the dense PyTorch model of the run directory.
    model = load_run(tiny_run).build_model()
    ids = lm.vocab.encode(text, add_eos=True)
    inputs = torch.tensor([lm.vocab.eos_id] + ids[:-1]).view(-1, 1)
    logits, _ = model(inputs, model.init_hidden(1))
    ref = torch.log_softmax(logits[:, 0], -1).gather(1, torch.tensor(ids).view(-1, 1)).view(-1)
    assert torch.allclose(torch.tensor(body["logprobs"]), ref.double().float(), rtol=1e-5, atol=1e-5)


def test_unknown_words_map_to_unk(client):
    r = client.post("/v1/score", json={"text": "the qwxzzy company"})
    assert r.status_code == 200
    assert r.json()["tokens"][:3] == ["the", "<unk>", "company"]
    assert r.json()["unknown_words"] == ["qwxzzy"]


def test_generate_is_reproducible_per_seed(client, lm):
    req = {"prompt": "the company", "max_new_tokens": 12, "temperature": 0.9, "top_k": 40, "top_p": 0.95,
           "seed": 3}
    a, b = client.post("/v1/generate", json=req), client.post("/v1/generate", json=req)
    assert a.status_code == 200, a.text
    assert a.json() == b.json()
    assert len(a.json()["tokens"]) == 12
    assert all(t in lm.vocab for t in a.json()["tokens"])


def test_greedy_generation_follows_argmax(client, lm):
    r = client.post("/v1/generate", json={"prompt": "the", "max_new_tokens": 3, "temperature": 0})
    tokens = r.json()["tokens"]
    context = [lm.vocab.eos_id, lm.vocab.stoi["the"]]
    for t in tokens:
        logp, _ = lm.forward(torch.tensor(context).view(-1, 1), lm.init_state(1))
        assert lm.vocab.itos[int(logp[-1, 0].argmax())] == t
        context.append(lm.vocab.stoi[t])


@pytest.mark.parametrize("path,body,fragment", [
    ("/v1/score", {"text": ""}, "text"),
    ("/v1/score", {"text": "   \n "}, "at least one word"),
    ("/v1/score", {"text": 42}, "text"),
    ("/v1/score", {}, "text"),
    ("/v1/score", {"text": "a", "extra": 1}, "extra"),
    ("/v1/generate", {"prompt": "the", "max_new_tokens": -1}, "max_new_tokens"),
    ("/v1/generate", {"prompt": "the", "max_new_tokens": MAX_NEW_TOKENS + 1}, "max_new_tokens"),
    ("/v1/generate", {"prompt": "the", "max_new_tokens": "5"}, "max_new_tokens"),
    ("/v1/generate", {"prompt": "the", "temperature": -1}, "temperature"),
    ("/v1/generate", {"prompt": "the", "top_p": 0}, "top_p"),
    ("/v1/generate", {"prompt": 5}, "prompt"),
])
def test_bad_input_is_422_with_message(client, path, body, fragment):
    r = client.post(path, json=body)
    assert r.status_code == 422
    assert r.json()["type"] == "invalid_request"
    assert fragment in r.json()["error"]


def test_malformed_json_and_unknown_route(client):
    r = client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "json" in r.json()["error"].lower()
    r = client.get("/v1/nope")
    assert r.status_code == 404 and r.json()["type"] == "not_found"
    # The server still answers after bad requests.
    assert client.get("/health").status_code == 200


def test_openapi_documents_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/score", "/v1/generate", "/health"} <= set(spec["paths"])


def test_serving_imports_no_training_only_packages():
    """The server ships without the ``train`` extra: serving and the runtime never import these."""
    import subprocess
    import sys

    import importlib.util

    ray_app = ", selfish_deploy.serving.ray_app" if importlib.util.find_spec("ray") else ""  # the ray extra
    # Ray Serve imports pandas and pyarrow when they are installed (the eval extra brings them): only what
    # ours adds counts.
    code = ("import sys; watched = ('matplotlib', 'networkx', 'pyarrow', 'selfish_deploy.training'); "
            f"{'import ray, ray.serve; ' if ray_app else ''}before = set(m for m in watched if m in sys.modules); "
            f"import selfish_deploy.serving.app, selfish_deploy.serving.cli{ray_app}, "
            "selfish_deploy.runtime; import selfish_deploy.serving.cli as c; c.build_parser(); "
            "print(sorted(m for m in watched if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_score_a_list_equals_one_at_a_time(client):
    texts = ["the company said", "shares rose sharply\nthe market fell"]
    many = client.post("/v1/score", json={"text": texts})
    assert many.status_code == 200, many.text
    one = [client.post("/v1/score", json={"text": t}).json() for t in texts]
    assert many.json()["results"] == one
    assert [r["num_tokens"] for r in one] == [4, 8]


def test_generate_stop_penalty_and_finish_reason(client, lm):
    from selfish_deploy.runtime import SamplingParams

    base = {"prompt": "the company", "max_new_tokens": 15, "temperature": 0.9, "seed": 8}
    full = client.post("/v1/generate", json=base).json()
    assert full["finish_reason"] == "length"
    ref = lm.generate("the company", SamplingParams(max_tokens=15, temperature=0.9, seed=8))
    assert full["tokens"] == ref.tokens
    stop = full["tokens"][5]
    cut = client.post("/v1/generate", json={**base, "stop": [stop]}).json()
    assert cut["finish_reason"] == "stop" and cut["text"] == full["text"][:full["text"].index(stop)]
    pen = client.post("/v1/generate", json={**base, "repetition_penalty": 1.5}).json()
    ref = lm.generate("the company", SamplingParams(max_tokens=15, temperature=0.9, seed=8, repetition_penalty=1.5))
    assert pen["tokens"] == ref.tokens


def test_generate_stream_is_sse_ending_with_the_full_answer(client):
    import json

    req = {"prompt": "the company", "max_new_tokens": 7, "temperature": 0.9, "seed": 2}
    plain = client.post("/v1/generate", json=req).json()
    with client.stream("POST", "/v1/generate", json={**req, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [block for block in r.read().decode().split("\n\n") if block]
    kinds = [e.split("\n")[0] for e in events]
    assert kinds == ["event: token"] * 7 + ["event: done"]
    data = [json.loads(e.split("\n")[1][len("data: "):]) for e in events]
    assert [d["token"] for d in data[:-1]] == plain["tokens"]
    assert "".join(d["text"] for d in data[:-1]) == plain["text"]
    assert data[-1] == plain


def test_info_and_metrics(client, lm):
    info = client.get("/info").json()
    assert info["arch"] == "lstm" and info["backend"] == "sparse" and info["kernels"] == lm.info()["kernels"]
    assert info["limits"]["max_new_tokens"] == MAX_NEW_TOKENS and info["api_key_required"] is False
    client.post("/v1/score", json={"text": "the"})
    text = client.get("/metrics").text
    assert 'selfish:http_requests_total{method="POST",route="/v1/score",status="200"}' in text
    for name in ("selfish:num_requests_waiting", "selfish:prompt_tokens_total", "selfish:batch_size_bucket",
                 "selfish:time_to_first_token_seconds_bucket", "selfish:e2e_request_latency_seconds_bucket"):
        assert name in text
