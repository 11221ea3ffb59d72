"""The Ray Serve deployment on a local Ray instance: two replicas, each with its own engine, both answer, and
their answers equal the single-process server's."""

from __future__ import annotations

import time

import httpx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from selfish_deploy.runtime import SparseLM  # noqa: E402
from selfish_deploy.serving.app import create_app  # noqa: E402
from selfish_deploy.serving.config import ServeConfig  # noqa: E402
from selfish_deploy.serving.live import LiveServer, free_port  # noqa: E402
from selfish_deploy.serving.ray_app import build  # noqa: E402

REQUESTS = [("/v1/score", {"text": ["the company said", "shares rose"]}),
            ("/v1/generate", {"prompt": "the company", "max_new_tokens": 8, "temperature": 0.9, "seed": 4}),
            ("/v1/completions", {"model": "tiny", "prompt": "the", "max_tokens": 5, "seed": 9, "logprobs": 1,
                                 "echo": True})]


def answers(url: str) -> list:
    out = []
    for path, body in REQUESTS:
        r = httpx.post(url + path, json=body, timeout=60)
        assert r.status_code == 200, r.text
        j = r.json()
        out.append({"choices": j["choices"], "usage": j["usage"]} if path == "/v1/completions" else j)
    return out


@pytest.fixture(scope="module")
def ray_url(tiny_export):
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build({"model": str(tiny_export), "model_name": "tiny", "num_replicas": "2", "num_cpus": "0.5",
                         "threads": "1"}), name="selfish", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while httpx.get(url + "/health", timeout=10).status_code != 200:
            assert time.time() < deadline, "the replicas did not become healthy"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_like_the_single_process_server(ray_url, tiny_export):
    pids = set()
    for _ in range(40):
        info = httpx.get(ray_url + "/info", timeout=30).json()
        assert info["model"] == "tiny" and info["backend"] == "sparse"
        pids.add(info["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, "both replicas should answer"
    with LiveServer(create_app(SparseLM.load(tiny_export), config=ServeConfig(model_name="tiny"))) as single:
        expected = answers(single.url)
    for _ in range(2):  # at least one round per replica is likely; every round must match
        assert answers(ray_url) == expected


def test_errors_and_openapi_through_ray(ray_url):
    r = httpx.post(ray_url + "/v1/completions", json={"model": "other", "prompt": "the"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.get(ray_url + "/v1/score", timeout=30)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "/v1/completions" in httpx.get(ray_url + "/openapi.json", timeout=30).json()["paths"]


def test_config_file_is_a_valid_serve_config():
    from pathlib import Path

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from selfish_deploy.serving.ray_app import deployment_options

    path = Path(__file__).resolve().parents[1] / "serving" / "ray_serve.yaml"
    spec = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    app = spec.applications[0]
    assert app.import_path == "selfish_deploy.serving.ray_app:build"
    options = deployment_options(app.args)
    assert options["autoscaling_config"]["max_replicas"] == 4 and options["ray_actor_options"]["num_cpus"] == 2
