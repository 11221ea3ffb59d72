"""FastAPI application: request handling only. Errors become one JSON shape, ``{"error", "type"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from selfish_deploy.runtime import SamplingParams, SparseLM

from .schemas import ErrorResponse, GenerateRequest, GenerateResponse, Health, ScoreRequest, ScoreResponse

log = logging.getLogger(__name__)
ERRORS = {422: {"model": ErrorResponse}}


def describe(exc: RequestValidationError) -> str:
    """One readable line per problem: ``body.max_new_tokens: Input should be less than or equal to 1024``."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(lm: SparseLM, model_name: str) -> FastAPI:
    app = FastAPI(title="selfish-deploy", version="0.1.0",
                  description="Scoring and generation with a sparse recurrent language model.")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"error": describe(exc), "type": "invalid_request"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        kind = "not_found" if exc.status_code == 404 else "invalid_request"
        return JSONResponse(status_code=exc.status_code, content={"error": str(exc.detail), "type": kind})

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception):
        log.exception("request failed")
        return JSONResponse(status_code=500, content={"error": "internal error", "type": "internal"})

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", model=model_name, arch=lm.config.arch, vocab_size=len(lm.vocab),
                      density=float(lm.exported.config.get("density", 1.0)), device=str(lm.device))

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERRORS)
    async def score(req: ScoreRequest) -> ScoreResponse:
        s = await run_in_threadpool(lm.score, req.text)
        return ScoreResponse(tokens=s.tokens, logprobs=s.logprobs, log_likelihood=s.log_likelihood,
                             perplexity=s.perplexity, unknown_words=s.unknown)

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS)
    async def generate(req: GenerateRequest) -> GenerateResponse:
        params = SamplingParams(max_tokens=req.max_new_tokens, temperature=req.temperature, top_k=req.top_k,
                                top_p=req.top_p, seed=req.seed, stop_at_eos=req.stop_at_eos)
        out = await run_in_threadpool(lm.generate, req.prompt, params)
        return GenerateResponse(text=out.text, tokens=out.tokens,
                                prompt_unknown_words=[w for w in req.prompt.split() if w not in lm.vocab])

    return app
