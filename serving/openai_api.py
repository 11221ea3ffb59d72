"""OpenAI-compatible endpoints in vLLM's shapes, so the OpenAI SDK and lm-evaluation-harness's
``local-completions`` work unmodified.

Prompts: a string starts after the sentence-start ``<eos>`` (as /v1/score and /v1/generate); token ids are
taken exactly as given. With ``echo`` and ``logprobs`` the prompt's tokens come back scored (the first
``null``), so ``sum(token_logprobs[1:])`` of ``[<eos>] + ids`` equals /v1/score's log-likelihood.
A completion's text starts with a space when it continues a word, so ``prompt + text`` reads as one text.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from selfish_deploy.runtime import SamplingParams, TokenEvent, detokenize
from selfish_deploy.vocab import EOS, UNK

from . import calls
from .errors import ApiError, OpenAIErrorResponse, documented
from .openai_schemas import (CompletionChoice, CompletionLogProbs, CompletionRequest, CompletionResponse,
                             DetokenizeRequest, DetokenizeResponse, ModelCard, ModelList, TokenizeRequest,
                             TokenizeResponse, TokenizerInfo, Usage)

STARTED = int(time.time())


def router(auth: bool) -> APIRouter:
    r = APIRouter(responses=documented(OpenAIErrorResponse, auth))
    r.add_api_route("/v1/models", models, methods=["GET"], response_model=ModelList)
    r.add_api_route("/v1/completions", completions, methods=["POST"], response_model=CompletionResponse,
                    responses={200: {"content": {"text/event-stream": {}},
                                     "description": "JSON, or with stream: true Server-Sent Events of "
                                     "CompletionResponse chunks ending with 'data: [DONE]'"},
                               **documented(OpenAIErrorResponse, auth, (400, 404, 429, 504))})
    r.add_api_route("/tokenize", tokenize, methods=["POST"], response_model=TokenizeResponse,
                    responses=documented(OpenAIErrorResponse, auth, (400, 404)))
    r.add_api_route("/detokenize", detokenize_ids, methods=["POST"], response_model=DetokenizeResponse,
                    responses=documented(OpenAIErrorResponse, auth, (400, 404)))
    r.add_api_route("/tokenizer_info", tokenizer_info, methods=["GET"], response_model=TokenizerInfo)
    return r


def check_model(request: Request, model: str | None) -> None:
    name = request.app.state.config.model_name
    if model is not None and model != name:
        raise ApiError(404, f"The model `{model}` does not exist (this server serves `{name}`).", param="model")


async def models(request: Request) -> ModelList:
    """The one model this server serves."""
    cfg = request.app.state.config
    return ModelList(data=[ModelCard(id=cfg.model_name, created=STARTED, root=cfg.model_name,
                                     max_model_len=cfg.max_input_tokens)])


async def tokenize(req: TokenizeRequest, request: Request) -> TokenizeResponse:
    """Token ids of a prompt, as /v1/completions would take it (``add_special_tokens``: the leading <eos>)."""
    check_model(request, req.model)
    lm = calls.engine(request)
    ids = lm.prompt_ids(req.prompt) if req.add_special_tokens else lm.vocab.encode(req.prompt)
    return TokenizeResponse(count=len(ids), max_model_len=request.app.state.config.max_input_tokens, tokens=ids,
                            token_strs=lm.vocab.decode(ids))


async def detokenize_ids(req: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    """Text of token ids: words joined by spaces, <eos> as a newline."""
    check_model(request, req.model)
    lm = calls.engine(request)
    lm.check_ids(req.tokens)
    return DetokenizeResponse(prompt=detokenize(lm.vocab.decode(req.tokens)))


async def tokenizer_info(request: Request) -> TokenizerInfo:
    """The word vocabulary, in the shape of a Hugging Face tokenizer config (``eos_token`` and friends)."""
    lm = calls.engine(request)
    v = lm.vocab
    return TokenizerInfo(tokenizer_class="WordVocabulary", eos_token=EOS, eos_token_id=v.eos_id, bos_token=EOS,
                         unk_token=UNK if UNK in v else None, unk_token_id=v.stoi.get(UNK), vocab_size=len(v),
                         model_max_length=request.app.state.config.max_input_tokens, add_bos_token=True)


# ---- /v1/completions -------------------------------------------------------------------------------------------

def prompts_of(req: CompletionRequest, lm) -> list[tuple[list[int], str, bool]]:
    """(ids, echo text, from a string) per prompt."""
    p = req.prompt
    if isinstance(p, str):
        items = [p]
    elif not p:
        raise ApiError(400, "prompt must not be empty", param="prompt")
    elif all(isinstance(x, int) for x in p):
        items = [p]
    else:
        items = p
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((lm.prompt_ids(item), item, True))
        else:
            if not item:
                raise ApiError(400, "a token-id prompt needs at least one token", param="prompt")
            lm.check_ids(item)
            out.append((list(item), detokenize(lm.vocab.decode(item)), False))
    return out


def sampling(req: CompletionRequest, cfg, choice: int) -> SamplingParams:
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    seed = None if req.seed is None else (req.seed + choice) % 2**64
    max_tokens = cfg.max_new_tokens if req.max_tokens is None else req.max_tokens
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                          min_p=req.min_p, min_tokens=req.min_tokens,
                          repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                          frequency_penalty=req.frequency_penalty, seed=seed, stop=stop,
                          stop_at_eos=not req.ignore_eos, logprobs=req.logprobs or 0,
                          stop_token_ids=tuple(req.stop_token_ids or ()),
                          logit_bias={int(k): v for k, v in (req.logit_bias or {}).items()})


def check(req: CompletionRequest, request: Request) -> None:
    cfg = request.app.state.config
    check_model(request, req.model)
    vocab = len(calls.engine(request).vocab) if req.logit_bias else 0
    rules = [(req.max_tokens is None or req.max_tokens <= cfg.max_new_tokens, "max_tokens",
              f"max_tokens must be at most {cfg.max_new_tokens} (the server's limit)"),
             (req.n <= cfg.max_n, "n", f"n must be at most {cfg.max_n}"),
             (req.min_tokens <= (cfg.max_new_tokens if req.max_tokens is None else req.max_tokens), "min_tokens",
              "min_tokens must be at most max_tokens"),
             (req.best_of is None or req.n <= req.best_of <= cfg.max_n, "best_of",
              f"best_of must be at least n and at most {cfg.max_n}"),
             (not req.stream or req.best_of in (None, req.n), "best_of",
              "best_of other than n cannot be streamed (the best are known at the end)"),
             (req.logprobs is None or req.logprobs <= cfg.max_logprobs, "logprobs",
              f"logprobs must be at most {cfg.max_logprobs}"),
             (all(int(k) < vocab for k in req.logit_bias or {}), "logit_bias",
              "logit_bias token ids must be in the vocabulary (GET /tokenizer_info: vocab_size)"),
             (req.suffix is None, "suffix", "suffix is not supported")]
    for ok, param, message in rules:
        if not ok:
            raise ApiError(400, message, param=param)


def top_dict(lm, top, chosen: int, lp: float) -> dict[str, float]:
    d = {lm.vocab.itos[i]: v for i, v in (top or [])}
    d.setdefault(lm.vocab.itos[chosen], lp)
    return d


def offsets(tokens: list[str], start: int = 0, lead: str = "") -> list[int]:
    """Character offset of each token in ``lead + detokenize(tokens)`` (plus ``start``)."""
    out, at = [], start + len(lead)
    for i, t in enumerate(tokens):
        if t == EOS:
            out.append(at)
            at += 1
            continue
        if i and tokens[i - 1] != EOS:
            at += 1
        out.append(at)
        at += len(t)
    return out


class Choice:
    """Text and log-probabilities of one choice, built as its tokens come."""

    def __init__(self, lm, index: int, ids: list[int], echo_text: str, from_string: bool, want: int | None,
                 prompt_scores, echo: bool):
        self.lm, self.index, self.want = lm, index, want
        self.space = " " if ids[-1] != lm.vocab.eos_id else ""  # a continuation of a line starts with a space
        self.started = False
        self.text = echo_text if echo else ""
        self.lp = CompletionLogProbs() if want is not None else None
        self.echo_chunk = self.text
        if echo and self.lp is not None:
            words = lm.vocab.decode(ids)
            shown = words[1:] if from_string else words  # the implicit <eos> of a string prompt has no text
            self.lp.tokens += words
            self.lp.text_offset += ([0] if from_string else []) + offsets(shown)
            self.lp.token_logprobs += [None] + list(prompt_scores.logprobs)
            tops = prompt_scores.top or [None] * len(prompt_scores.logprobs)
            self.lp.top_logprobs += [None] + [top_dict(lm, t, c, v) for t, c, v in
                                              zip(tops, ids[1:], prompt_scores.logprobs)]

    def add(self, ev: TokenEvent) -> tuple[str, CompletionLogProbs | None]:
        """Record one token; returns the text delta and the token's log-probabilities for a stream chunk."""
        delta = ev.text
        if delta and not self.started:
            self.started = True
            if not delta.startswith("\n"):
                delta = self.space + delta
        before = len(self.text)
        self.text += delta
        piece = None
        if self.lp is not None:
            piece = CompletionLogProbs(text_offset=[before], token_logprobs=[ev.logprob], tokens=[ev.token],
                                       top_logprobs=[top_dict(self.lm, ev.top, ev.token_id, ev.logprob)])
            for k in ("text_offset", "token_logprobs", "tokens", "top_logprobs"):
                getattr(self.lp, k).extend(getattr(piece, k))
        return delta, piece


async def completions(req: CompletionRequest, request: Request):
    """Completions of one or more prompts, ``n`` choices each; ``stream`` for Server-Sent Events."""
    check(req, request)
    cfg = request.app.state.config
    lm = calls.engine(request)
    prompts = prompts_of(req, lm)
    if len(prompts) > cfg.max_prompts:
        raise ApiError(400, f"at most {cfg.max_prompts} prompts per request", param="prompt")
    for ids, _, _ in prompts:
        if len(ids) > cfg.max_input_tokens:
            raise ApiError(400, f"a prompt has {len(ids)} tokens, over the limit of {cfg.max_input_tokens}",
                           param="prompt")
    scores = [None] * len(prompts)
    if req.echo and req.logprobs is not None:
        scores = await calls.score(request, [ids for ids, _, _ in prompts], req.logprobs)
    k = req.best_of or req.n  # candidates per prompt; the n with the highest total log-probability are returned
    choices = [Choice(lm, p * k + j, ids, text, from_string, req.logprobs, scores[p], req.echo)
               for p, (ids, text, from_string) in enumerate(prompts) for j in range(k)]
    seqs = [(ids, sampling(req, cfg, j)) for ids, _, _ in prompts for j in range(k)]
    usage = Usage(prompt_tokens=sum(len(ids) for ids, _, _ in prompts), total_tokens=0)
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    events = calls.generate_many(request, seqs, watch=not req.stream)

    def chunk(c: Choice, text: str, lp, reason=None) -> dict:
        return CompletionResponse(id=rid, created=created, model=cfg.model_name, choices=[CompletionChoice(
            index=c.index, text=text, logprobs=lp, finish_reason=reason)]).model_dump()

    if not req.stream:
        reasons, totals = {}, {}
        async for i, item in events:
            if isinstance(item, TokenEvent):
                choices[i].add(item)
            else:
                reasons[i], totals[i] = item.finish_reason, sum(item.logprobs)
                usage.completion_tokens += len(item.token_ids)  # every candidate's tokens: all were generated
        usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        kept = list(range(len(choices))) if k == req.n else [  # best_of: by total log-probability, stable
            i for p in range(len(prompts)) for i in sorted(range(p * k, p * k + k), key=lambda i: -totals[i])[:req.n]]
        return CompletionResponse(id=rid, created=created, model=cfg.model_name, usage=usage, choices=[
            CompletionChoice(index=r, text=choices[i].text, logprobs=choices[i].lp, finish_reason=reasons.get(i))
            for r, i in enumerate(kept)])

    first = await anext(events, None)  # an error before the first token is still an HTTP error

    async def body():
        try:
            for c in choices:
                if req.echo:
                    lp = c.lp.model_copy() if c.lp is not None else None
                    yield calls.sse(chunk(c, c.echo_chunk, lp))
            item = first
            while item is not None:
                i, ev = item
                c = choices[i]
                if isinstance(ev, TokenEvent):
                    delta, lp = c.add(ev)
                    yield calls.sse(chunk(c, delta, lp, ev.finish_reason))
                else:
                    usage.completion_tokens += len(ev.token_ids)
                    if not ev.token_ids:  # max_tokens 0: no token chunk carried the finish reason
                        yield calls.sse(chunk(c, "", None, ev.finish_reason))
                item = await anext(events, None)
            if req.stream_options and req.stream_options.include_usage:
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
                yield calls.sse(CompletionResponse(id=rid, created=created, model=cfg.model_name, choices=[],
                                                   usage=usage).model_dump())
            yield calls.sse("[DONE]")
        except ApiError as e:
            yield calls.sse({"error": {"message": e.message, "type": "timeout_error", "param": None,
                                       "code": e.status}})
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type="text/event-stream", headers=calls.SSE_HEADERS)
