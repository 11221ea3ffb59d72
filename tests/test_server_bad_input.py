"""Bad input over real HTTP gets a 4xx with a JSON message and the server stays up: wrong types, empty, too long,
invalid UTF-8, huge numbers, unknown fields, bad or missing API key, huge bodies (refused unread), 405 + Allow."""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest

from selfish_deploy.runtime import SparseLM
from selfish_deploy.serving.app import create_app
from selfish_deploy.serving.cli import build_parser
from selfish_deploy.serving.config import ServeConfig
from selfish_deploy.serving.live import LiveServer

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 64_000


@pytest.fixture(scope="module")
def server(tiny_export):
    config = ServeConfig(model_name="tiny", api_key=KEY, max_body_bytes=LIMIT, max_input_tokens=500,
                         max_new_tokens=50)
    with LiveServer(create_app(SparseLM.load(tiny_export), config=config)) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30, headers=AUTH) as c:
        yield c


@pytest.fixture(autouse=True)
def stays_up(http):
    yield
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def assert_error(r: httpx.Response, status: int, fragment: str = ""):
    assert r.status_code == status, r.text
    body = r.json()
    if isinstance(body["error"], dict):  # OpenAI shape
        message = body["error"]["message"]
        assert body["error"]["type"] and body["error"]["code"] == status
    else:
        message = body["error"]
        assert body["type"]
    assert fragment.lower() in message.lower()


BAD = [
    ("/v1/score", {"text": ["a", 5]}, 422, "text"),
    ("/v1/score", {"text": []}, 422, "at least"),
    ("/v1/score", {"text": None}, 422, "text"),
    ("/v1/score", {"text": "word " * 501}, 400, "limit"),
    ("/v1/score", {"text": ["the"] * 65}, 422, "at most 64"),
    ("/v1/score", {"text": "x" * 100_001}, 413, ""),  # over the body limit before validation
    ("/v1/score", {"text": "the", "unknown": True}, 422, "unknown"),
    ("/v1/score", [1, 2, 3], 422, ""),
    ("/v1/score", "the", 422, ""),
    ("/v1/generate", {"prompt": "the", "max_new_tokens": 10**30}, 422, "max_new_tokens"),
    ("/v1/generate", {"prompt": "the", "max_new_tokens": 51}, 422, "limit"),
    ("/v1/generate", {"prompt": "the", "seed": 2**100}, 422, "seed"),
    ("/v1/generate", {"prompt": "the", "seed": -1}, 422, "seed"),
    ("/v1/generate", {"prompt": "the", "temperature": 1e308}, 422, "temperature"),
    ("/v1/generate", {"prompt": "the", "top_k": 2**70}, 422, "top_k"),
    ("/v1/generate", {"prompt": "the", "top_p": True}, 422, "top_p"),
    ("/v1/generate", {"prompt": "the", "stop": ["x"] * 9}, 422, "stop"),
    ("/v1/generate", {"prompt": "the", "repetition_penalty": 0}, 422, "repetition_penalty"),
    ("/v1/generate", {"prompt": "the", "stream": "yes"}, 422, "stream"),
    ("/v1/generate", {"prompt": "word " * 600}, 400, "limit"),
    ("/v1/completions", {"prompt": "the", "max_tokens": -1}, 422, "max_tokens"),
    ("/v1/completions", {"prompt": "the", "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {"prompt": [[1, 2], []]}, 400, "at least one token"),
    ("/v1/completions", {"prompt": [-1]}, 400, "token ids"),
    ("/v1/completions", {"prompt": [1] * 501}, 400, "limit"),
    ("/v1/completions", {"prompt": [[1]] * 65}, 400, "at most 64"),
    ("/v1/completions", {"prompt": "the", "n": 0}, 422, "n"),
    ("/v1/completions", {"prompt": "the", "stream_options": {"include_usage": 1}}, 422, "include_usage"),
    ("/v1/completions", {"prompt": "the", "logit_bias": {"99999": 1.0}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "the", "logit_bias": {"the": 1.0}}, 422, "token ids"),
    ("/v1/completions", {"prompt": "the", "logit_bias": {"5": 101}}, 422, "[-100, 100]"),
    ("/v1/completions", {"prompt": "the", "logit_bias": {str(i): 1 for i in range(301)}}, 422, "at most 300"),
    ("/v1/completions", {}, 422, "prompt"),
    ("/tokenize", {"prompt": 3}, 422, "prompt"),
    ("/detokenize", {"tokens": [10**9]}, 400, "token ids"),
    ("/detokenize", {"tokens": "1 2"}, 422, "tokens"),
]


@pytest.mark.parametrize("path,body,status,fragment", BAD)
def test_bad_json_bodies(http, path, body, status, fragment):
    assert_error(http.post(path, json=body), status, fragment)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"text": "caf\xe9"}', b"\xff\xfe\x00", b"[" * 100_00 + b"]" * 100_00,
                                 b'{"text": "the", "text": 1}', b'{"prompt": "the", "seed": 1' + b"0" * 5000 + b"}",
                                 b'{"prompt": "the", "temperature": NaN}'])
def test_malformed_bodies(http, raw):
    path = "/v1/generate" if b"prompt" in raw else "/v1/score"
    r = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]


@pytest.mark.parametrize("path,body", [("/v1/score", {"text": "the \ud800 company"}),
                                       ("/v1/generate", {"prompt": "a", "stop": ["\udfff"]}),
                                       ("/v1/completions", {"prompt": ["the", "\ud800"]}),
                                       ("/tokenize", {"prompt": "\ud800"})])
def test_lone_surrogates_are_422(http, path, body):
    raw = json.dumps(body)  # escaped: a lone surrogate has no UTF-8 form
    assert_error(http.post(path, content=raw, headers={"content-type": "application/json"}), 422, "unicode")


def test_control_characters_are_words(http):
    r = http.post("/v1/score", json={"text": "the \x00 company \u200b"})
    assert r.status_code == 200
    assert r.json()["unknown_words"] == ["\x00", "\u200b"]


def test_api_key_required_except_health_and_metrics(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic x"}):
        r = httpx.post(server.url + "/v1/score", json={"text": "the"}, headers=headers)
        assert_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "the"}, headers={"Authorization": "Bearer x"})
    assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/openapi.json").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200
    assert httpx.get(server.url + "/info", headers=AUTH).json()["api_key_required"] is True
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="tiny", prompt="the", max_tokens=1)
    good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert good.completions.create(model="tiny", prompt="the", max_tokens=2).usage.completion_tokens == 2


def test_metrics_key_when_configured(tiny_export):
    config = ServeConfig(model_name="tiny", api_key=KEY, metrics_need_key=True)
    with LiveServer(create_app(SparseLM.load(tiny_export), config=config)) as s:
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/metrics", headers=AUTH).status_code == 200


def raw_request(server, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``), return what the server answers without sending more."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 40:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_huge_body_is_refused_before_it_is_read(server):
    # 30 MB announced, nothing sent: the 413 comes back at once
    head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 30000000\r\n\r\n")
    answer = raw_request(server, head)
    assert answer.startswith(b"HTTP/1.1 413") and b"over the limit" in answer
    # chunked, no length: read up to the limit only
    chunk = b'{"text": "' + b"a " * 40_000
    head = (b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    answer = raw_request(server, head, hex(len(chunk))[2:].encode() + b"\r\n" + chunk + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 413")
    # the key is checked before the size
    head = b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000\r\n\r\n"
    assert raw_request(server, head).startswith(b"HTTP/1.1 401")


def test_405_carries_allow_and_404_is_json(http):
    r = http.get("/v1/score")
    assert_error(r, 405)
    assert r.headers["allow"] == "POST"
    r = http.delete("/v1/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["type"]
    assert_error(http.get("/nothing/here"), 404)


def test_no_cors_unless_configured(http, tiny_export):
    r = http.options("/v1/score", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    config = ServeConfig(model_name="tiny", cors_origins=("http://app.example",))
    with LiveServer(create_app(SparseLM.load(tiny_export), config=config)) as s:
        r = httpx.post(s.url + "/v1/score", json={"text": "the"}, headers={"Origin": "http://app.example"})
        assert r.headers["access-control-allow-origin"] == "http://app.example"


def test_cli_binds_loopback_and_reads_the_environment(monkeypatch):
    from selfish_deploy.serving.cli import make_config

    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1"
    monkeypatch.setenv("SELFISH_API_KEY", "from-env")
    monkeypatch.setenv("SELFISH_MAX_QUEUE", "7")
    config = make_config(build_parser().parse_args(["--max-queue", "9"]), "m")
    assert config.api_key == "from-env" and config.max_queue == 9  # a flag wins over the environment
    assert make_config(build_parser().parse_args([]), "m").max_queue == 7
    assert make_config(build_parser().parse_args(["--no-batching"]), "m").batching is False
