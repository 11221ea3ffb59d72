"""Native endpoints: ``POST /v1/score`` and ``POST /v1/generate`` (JSON, or SSE with ``stream: true``)."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from selfish_deploy.runtime import Completion, SamplingParams, TokenEvent

from . import calls
from .errors import ApiError
from .schemas import GenerateRequest, GenerateResponse, ScoreListResponse, ScoreRequest, ScoreResponse

router = APIRouter()


def check_tokens(request: Request, n: int, what: str) -> None:
    limit = request.app.state.config.max_input_tokens
    if n > limit:
        raise ApiError(400, f"{what} has {n} tokens, over the limit of {limit} (--max-input-tokens)")


@router.post("/v1/score", response_model=ScoreResponse | ScoreListResponse)
async def score(req: ScoreRequest, request: Request):
    """Per-token log-probabilities of one text or a list (each scored from a sentence-start ``<eos>``)."""
    lm = calls.engine(request)
    texts = [req.text] if isinstance(req.text, str) else req.text
    if len(texts) > request.app.state.config.max_prompts:
        raise ApiError(422, f"text: at most {request.app.state.config.max_prompts} texts per request")
    targets = [lm.vocab.encode(t, add_eos=True) for t in texts]
    for ids in targets:
        check_tokens(request, len(ids), "a text")
    scored = await calls.score(request, [[lm.vocab.eos_id] + ids for ids in targets])
    out = []
    for text, ids, s in zip(texts, targets, scored):
        total = float(sum(s.logprobs))
        out.append(ScoreResponse(tokens=lm.vocab.decode(ids), logprobs=s.logprobs, log_likelihood=total,
                                 perplexity=math.exp(-total / len(ids)), num_tokens=len(ids),
                                 unknown_words=[w for w in text.split() if w not in lm.vocab]))
    return out[0] if isinstance(req.text, str) else ScoreListResponse(results=out)


def sampling(request: Request, req: GenerateRequest) -> SamplingParams:
    limit = request.app.state.config.max_new_tokens
    if req.max_new_tokens > limit:
        raise ApiError(422, f"body.max_new_tokens: must be at most {limit} (the server's limit)")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return SamplingParams(max_tokens=req.max_new_tokens, temperature=req.temperature, top_k=req.top_k,
                          top_p=req.top_p, repetition_penalty=req.repetition_penalty, seed=req.seed, stop=stop,
                          stop_at_eos=req.stop_at_eos)


@router.post("/v1/generate", response_model=GenerateResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "JSON, or with stream: true Server-Sent Events: 'token' events "
                              "({token, text, logprob}), then one 'done' event with the GenerateResponse"}})
async def generate(req: GenerateRequest, request: Request):
    """Continue a prompt; with ``stream: true``, Server-Sent Events of tokens, then the full text."""
    lm = calls.engine(request)
    params = sampling(request, req)
    ids = lm.prompt_ids(req.prompt)
    check_tokens(request, len(ids), "the prompt")
    unknown = [w for w in req.prompt.split() if w not in lm.vocab]

    def final(c: Completion) -> dict:
        return GenerateResponse(text=c.text, tokens=c.tokens, prompt_unknown_words=unknown,
                                finish_reason=c.finish_reason).model_dump()

    events = calls.generate_many(request, [(ids, params)], watch=not req.stream)
    if not req.stream:
        try:
            async for _, item in events:
                if not isinstance(item, TokenEvent):
                    return final(item)
        finally:
            await events.aclose()

    first = await anext(events)  # errors before the first token (queue full, bad ids) are still HTTP errors

    async def body():
        item = first[1]
        try:
            while True:
                if isinstance(item, TokenEvent):
                    yield calls.sse({"token": item.token, "text": item.text, "logprob": item.logprob}, "token")
                else:
                    yield calls.sse(final(item), "done")
                    return
                item = (await anext(events))[1]
        except ApiError as e:
            yield calls.sse({"error": e.message, "type": "timeout" if e.status == 504 else "error"}, "error")
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type="text/event-stream", headers=calls.SSE_HEADERS)
