"""The OpenAI-compatible API over real HTTP: the ``openai`` package as the client, lm-evaluation-harness's
``local-completions`` requests, and the numbers checked against /v1/score and the engine."""

from __future__ import annotations

import json
import math

import httpx
import openai
import pytest
import torch

from selfish_deploy.runtime import SamplingParams, SparseLM, detokenize
from selfish_deploy.serving.app import create_app
from selfish_deploy.serving.config import ServeConfig
from selfish_deploy.serving.live import LiveServer

NAME = "tiny"
TEXT = "the company said it expects higher sales"


@pytest.fixture(scope="module")
def lm(tiny_export):
    return SparseLM.load(tiny_export)


@pytest.fixture(scope="module")
def server(lm):
    with LiveServer(create_app(lm, config=ServeConfig(model_name=NAME))) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_sdk_completion_matches_the_engine(client, lm):
    out = client.completions.create(model=NAME, prompt="the company", max_tokens=6, temperature=0.9, seed=5)
    ref = lm.generate("the company", SamplingParams(max_tokens=6, temperature=0.9, seed=5))
    assert out.object == "text_completion" and out.model == NAME
    assert out.choices[0].text == " " + ref.text  # continues the prompt's line after a space
    assert out.choices[0].finish_reason == ref.finish_reason == "length"
    assert out.usage.prompt_tokens == 3 and out.usage.completion_tokens == 6 and out.usage.total_tokens == 9


def test_sdk_streaming_equals_plain(client):
    kw = dict(model=NAME, prompt=["the company", "shares"], max_tokens=8, temperature=1.0, seed=11, n=2)
    plain = client.completions.create(**kw)
    texts: dict[int, str] = {}
    reasons = {}
    usage = None
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + ch.text
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
        usage = chunk.usage or usage
    assert len(plain.choices) == 4
    assert texts == {c.index: c.text for c in plain.choices}
    assert reasons == {c.index: c.finish_reason for c in plain.choices}
    assert usage.completion_tokens == plain.usage.completion_tokens == 32
    # choice j of a prompt uses seed + j: the two choices of one prompt differ, and repeat exactly
    assert plain.choices[0].text != plain.choices[1].text


def test_logit_bias_steers_sampling_and_keeps_the_models_logprobs(client, lm):
    """OpenAI's logit_bias (token id strings -> -100..100): +100 forces a token, -100 bans one; the
    log-probabilities returned are the model's own (vLLM's raw logprobs)."""
    forced = client.completions.create(model=NAME, prompt="the company", max_tokens=4, seed=1, logprobs=1,
                                       logit_bias={"7": 100})
    word = lm.vocab.itos[7]
    assert forced.choices[0].logprobs.tokens == [word] * 4
    logp, _ = lm.forward(torch.tensor([lm.prompt_ids("the company")]).t(), None)
    assert forced.choices[0].logprobs.token_logprobs[0] == pytest.approx(logp[-1, 0, 7].item(), abs=1e-5)
    greedy = client.completions.create(model=NAME, prompt="the company", max_tokens=1, temperature=0, logprobs=1)
    first = greedy.choices[0].logprobs.tokens[0]
    banned = client.completions.create(model=NAME, prompt="the company", max_tokens=1, temperature=0, logprobs=1,
                                       logit_bias={str(lm.vocab.stoi[first]): -100})
    assert banned.choices[0].logprobs.tokens[0] != first


def test_best_of_returns_the_n_most_likely_candidates(client, lm):
    """best_of k: k candidates (choice j seeded seed + j, as n's choices), the n with the highest total
    log-probability returned most likely first; every candidate's tokens count as completion tokens."""
    kw = dict(max_tokens=6, temperature=1.0)
    out = client.completions.create(model=NAME, prompt=["the company", "shares"], n=2, best_of=4, seed=9, logprobs=0,
                                    **kw)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for p, prompt in enumerate(["the company", "shares"]):
        candidates = [lm.generate(prompt, SamplingParams(seed=9 + j, **kw)) for j in range(4)]
        best = sorted(candidates, key=lambda c: -sum(c.logprobs))[:2]
        got = out.choices[2 * p: 2 * p + 2]
        assert [c.logprobs.tokens for c in got] == [b.tokens for b in best]
        assert sum(got[0].logprobs.token_logprobs) >= sum(got[1].logprobs.token_logprobs)
    assert out.usage.completion_tokens == 2 * 4 * 6
    same = client.completions.create(model=NAME, prompt="the company", n=3, best_of=3, seed=9, logprobs=0, **kw)
    assert [c.logprobs.tokens for c in same.choices] == [
        lm.generate("the company", SamplingParams(seed=9 + j, **kw)).tokens for j in range(3)]  # n's own order


def test_vllm_extras_min_p_and_min_tokens_reach_the_engine(client, lm):
    kw = dict(max_tokens=8, temperature=1.0, seed=4)
    extra = dict(min_p=0.2, min_tokens=3, ignore_eos=False, stop_token_ids=[5])
    out = client.completions.create(model=NAME, prompt="the company", logprobs=0, extra_body=extra, **kw)
    ref = lm.generate("the company", SamplingParams(min_p=0.2, min_tokens=3, stop_at_eos=True, stop_token_ids=(5,),
                                                    **kw))
    assert out.choices[0].logprobs.tokens == ref.tokens


def test_presence_and_frequency_penalties_reach_the_engine(client, lm):
    kw = dict(max_tokens=10, temperature=0.8, seed=3, presence_penalty=1.5, frequency_penalty=0.5)
    out = client.completions.create(model=NAME, prompt="the company", logprobs=1, **kw)
    ref = lm.generate("the company", SamplingParams(**kw))
    assert out.choices[0].logprobs.tokens == ref.tokens
    plain = lm.generate("the company", SamplingParams(**{**kw, "presence_penalty": 0, "frequency_penalty": 0}))
    assert plain.tokens != ref.tokens


def test_stop_strings_and_max_tokens_zero(client, lm):
    ref = lm.generate("the company", SamplingParams(max_tokens=12, temperature=0.9, seed=0))
    i = next(i for i in range(2, 12) if "<eos>" not in ref.tokens[i - 1:i + 1])
    stop = " " + ref.tokens[i]  # a word after a word: in the text with a space before it
    out = client.completions.create(model=NAME, prompt="the company", max_tokens=12, temperature=0.9, seed=0,
                                    stop=[stop, "never-generated"])
    assert out.choices[0].finish_reason == "stop"
    cut = ref.text[:ref.text.index(stop)]
    assert out.choices[0].text == ("" if cut.startswith("\n") else " ") + cut
    zero = client.completions.create(model=NAME, prompt="the company", max_tokens=0)
    assert zero.choices[0].text == "" and zero.usage.completion_tokens == 0


def test_echo_logprobs_of_a_string_prompt(http, lm):
    r = http.post("/v1/completions", json={"model": NAME, "prompt": TEXT, "max_tokens": 0, "echo": True,
                                           "logprobs": 2})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == TEXT
    lp = choice["logprobs"]
    assert lp["tokens"] == ["<eos>"] + TEXT.split()  # the implicit sentence start, then the words
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    ref = lm.score_ids([lm.prompt_ids(TEXT)], top_logprobs=2)[0]
    assert lp["token_logprobs"][1:] == pytest.approx(ref.logprobs, abs=1e-6)
    for top, chosen, ref_top in zip(lp["top_logprobs"][1:], lp["tokens"][1:], ref.top):
        assert chosen in top and {lm.vocab.itos[i] for i, _ in ref_top} <= set(top)
    assert [TEXT[o:o + len(t)] for o, t in zip(lp["text_offset"][1:], lp["tokens"][1:])] == TEXT.split()


def lm_eval_loglikelihood(http, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """What lm-evaluation-harness's local-completions sends for a loglikelihood request, parsed its way."""
    payload = {"model": NAME, "prompt": [context + continuation], "temperature": 0, "max_tokens": 1,
               "logprobs": 1, "seed": 1234, "echo": True}
    out = http.post("/v1/completions", json=payload).json()
    choice = sorted(out["choices"], key=lambda c: c["index"])[0]
    ctxlen = len(context)
    tokens_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
    tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
    greedy = all(tok == max(top.values()) for tok, top in zip(tokens_logprobs, tops))
    return sum(tokens_logprobs), greedy


def test_lm_eval_loglikelihood_and_rolling_perplexity_equal_score(http):
    score = http.post("/v1/score", json={"text": TEXT}).json()
    ids = http.post("/tokenize", json={"model": NAME, "prompt": TEXT}).json()["tokens"]  # [<eos>] + words
    eos = http.get("/tokenizer_info").json()["eos_token_id"]
    assert ids[0] == eos
    # log-likelihood of the whole text (+ its closing <eos>) after the sentence start, as a continuation
    ll, _ = lm_eval_loglikelihood(http, [eos], ids[1:] + [eos])
    assert ll == pytest.approx(score["log_likelihood"], abs=1e-5)
    # a split into context and continuation adds up to the same
    head, _ = lm_eval_loglikelihood(http, [eos], ids[1:4])
    tail, _ = lm_eval_loglikelihood(http, ids[:4], ids[4:] + [eos])
    assert head + tail == pytest.approx(score["log_likelihood"], abs=1e-5)
    # rolling perplexity: one window, prefix token <eos>, max_tokens 0
    out = http.post("/v1/completions", json={"model": NAME, "prompt": [eos] + ids[1:] + [eos], "max_tokens": 0,
                                             "echo": True, "logprobs": 1, "temperature": 0}).json()
    lps = out["choices"][0]["logprobs"]["token_logprobs"]
    assert lps[0] is None
    assert math.exp(-sum(lps[1:]) / (len(lps) - 1)) == pytest.approx(score["perplexity"], rel=1e-6)


def test_token_id_prompt_is_taken_as_given(http, lm):
    ids = lm.vocab.encode("company said")  # no leading <eos>
    out = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 4, "temperature": 0.9, "seed": 2,
                                             "echo": True, "logprobs": 0}).json()
    assert out["usage"]["prompt_tokens"] == len(ids)
    lp = out["choices"][0]["logprobs"]
    assert lp["tokens"][:2] == ["company", "said"] and lp["token_logprobs"][0] is None
    ref = lm.generate(ids, SamplingParams(max_tokens=4, temperature=0.9, seed=2))
    assert lp["tokens"][2:] == ref.tokens
    assert out["choices"][0]["text"] == detokenize(["company", "said"] + ref.tokens)  # echo + completion


def test_raw_stream_shape_ends_with_done(http):
    with http.stream("POST", "/v1/completions", json={"model": NAME, "prompt": "the", "max_tokens": 3, "seed": 0,
                                                      "stream": True, "echo": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["text"] == "the"  # the echo comes first
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text[:4] in ("the ", "the\n"), text  # the completion follows after a separator (<eos> is a newline)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_tokenize_detokenize_round_trip(http, lm):
    t = http.post("/tokenize", json={"prompt": "the company", "add_special_tokens": False}).json()
    assert t["tokens"] == lm.vocab.encode("the company") and t["count"] == 2
    d = http.post("/detokenize", json={"tokens": [lm.vocab.eos_id] + t["tokens"] + [lm.vocab.eos_id]}).json()
    assert d["prompt"] == "\nthe company\n"
    info = http.get("/tokenizer_info").json()
    assert info["eos_token"] == "<eos>" and info["vocab_size"] == len(lm.vocab)


@pytest.mark.parametrize("body,status,param", [
    ({"model": "other", "prompt": "the"}, 404, "model"),
    ({"prompt": [99_999_999]}, 400, None),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": "the", "n": 10_000}, 400, "n"),
    ({"prompt": "the", "max_tokens": 10**9}, 400, "max_tokens"),
    ({"prompt": "the", "best_of": 3, "n": 4}, 400, "best_of"),
    ({"prompt": "the", "best_of": 3, "stream": True}, 400, "best_of"),
    ({"prompt": "the", "max_tokens": 2, "min_tokens": 3}, 400, "min_tokens"),
    ({"prompt": "the", "min_p": 1.5}, 422, None),
    ({"prompt": "the", "presence_penalty": 2.5}, 422, None),
    ({"prompt": "the", "temperature": "hot"}, 422, None),
    ({"prompt": "the", "bogus": 1}, 422, None),
])
def test_errors_in_openai_shape(http, client, body, status, param):
    r = http.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"].endswith("_error") and err["code"] == status
    if param:
        assert err["param"] == param
    if status == 404:
        with pytest.raises(openai.NotFoundError):
            client.completions.create(**{"max_tokens": 1, **body})
