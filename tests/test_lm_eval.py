"""lm-evaluation-harness itself, unmodified, against the server (issue 13): its ``local-completions`` model
on the bundled model, with the tasks of tests/data/lm_eval (rolling perplexity and log-likelihood of PTB-style
lines); the numbers it reports equal /v1/score's.

Two tokenizer set-ups, both as a user would write them: ``tokenizer=EXPORT_DIR/tokenizer`` (the export's
Hugging Face tokenizer, lm-eval tokenizes locally) and no tokenizer at all (lm-eval's "auto" finds
/tokenizer_info and /tokenize on the server and tokenizes there).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import httpx
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'selfish-deploy[eval]')")
pytest.importorskip("transformers", reason="transformers is not installed (pip install 'selfish-deploy[eval]')")

from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from selfish_deploy.assets import default_model_dir  # noqa: E402
from selfish_deploy.runtime import SparseLM  # noqa: E402
from selfish_deploy.serving.app import create_app  # noqa: E402
from selfish_deploy.serving.config import ServeConfig  # noqa: E402
from selfish_deploy.serving.live import LiveServer  # noqa: E402

TASKS = Path(__file__).parent / "data" / "lm_eval"
NAME = "ptb-lstm-sparse"
LINES = [line.strip() for line in (TASKS / "ptb_lines.txt").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def server():
    lm = SparseLM.load(default_model_dir())
    with LiveServer(create_app(lm, config=ServeConfig(model_name=NAME))) as s:
        yield s


@pytest.fixture(scope="module")
def scores(server) -> list[dict]:
    r = httpx.post(server.url + "/v1/score", json={"text": LINES}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def tokenize_calls(server) -> float:
    """How many /tokenize requests the server has answered (its Prometheus counter)."""
    text = httpx.get(server.url + "/metrics").text
    return sum(float(m) for m in re.findall(r'^selfish:http_requests_total\{[^}]*route="/tokenize"[^}]*\} (\S+)$',
                                             text, re.M))


@pytest.mark.parametrize("tokenizer", ["export", "server"])
def test_lm_eval_perplexity_and_loglikelihoods_equal_score(server, scores, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = {"model": NAME, "base_url": server.url + "/v1/completions", "tokenized_requests": True,
            "max_retries": 1}
    if tokenizer == "export":
        args |= {"tokenizer_backend": "huggingface", "tokenizer": str(default_model_dir() / "tokenizer")}
    before = tokenize_calls(server)
    out = lm_eval.simple_evaluate(model="local-completions", model_args=args, tasks=["ptb_lines", "ptb_lines_split"],
                                  task_manager=TaskManager(include_path=str(TASKS), include_defaults=False),
                                  bootstrap_iters=0, log_samples=True)
    # the export's tokenizer tokenizes in lm-eval's process; without one lm-eval asks the server
    assert (tokenize_calls(server) > before) == (tokenizer == "server")

    # rolling perplexity: each line's log-likelihood is /v1/score's, its word count /v1/score's num_tokens
    rolling = sorted(out["samples"]["ptb_lines"], key=lambda s: s["doc_id"])
    assert [s["doc"]["text"] for s in rolling] == LINES
    for sample, score in zip(rolling, scores):
        (ll,) = sample["filtered_resps"]
        (target,) = sample["arguments"][0]
        assert ll == pytest.approx(score["log_likelihood"], rel=1e-6, abs=1e-6)
        assert ConfigurableTask.count_words(target) == score["num_tokens"]
        assert math.exp(-ll / score["num_tokens"]) == pytest.approx(score["perplexity"], rel=1e-4)
    pooled = math.exp(-sum(s["log_likelihood"] for s in scores) / sum(s["num_tokens"] for s in scores))
    assert out["results"]["ptb_lines"]["word_perplexity,none"] == pytest.approx(pooled, rel=1e-4)

    # log-likelihood of each line's second half given its first: the sum of /v1/score's last log-probabilities
    split = sorted(out["samples"]["ptb_lines_split"], key=lambda s: s["doc_id"])
    assert len(split) == len(LINES)
    expected = []
    for sample, score in zip(split, scores):
        ll, _ = sample["filtered_resps"][0]
        half = len(sample["doc"]["context"].split())
        expected.append(sum(score["logprobs"][half:]))
        assert ll == pytest.approx(expected[-1], rel=1e-6, abs=1e-5)
    # lm-eval's "perplexity" of loglikelihood requests: exp of minus the mean request log-likelihood
    assert out["results"]["ptb_lines_split"]["perplexity,none"] == pytest.approx(
        math.exp(-sum(expected) / len(expected)), rel=1e-4)
