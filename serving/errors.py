"""Every error the server sends, in one place: native routes answer ``{"error": msg, "type": kind}``, the
OpenAI-compatible routes OpenAI's ``{"error": {"message", "type", "param", "code"}}``.

Middleware (API key, body size) answers before routing, so the shape is chosen by path, not by route.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from selfish_deploy.errors import UserError

from .worker import NotReady, QueueFull

log = logging.getLogger(__name__)

OPENAI_PREFIXES = ("/v1/completions", "/v1/models", "/tokenize", "/detokenize", "/tokenizer_info")

# status -> (native type, OpenAI type)
KINDS = {400: ("invalid_request", "invalid_request_error"), 401: ("unauthorized", "authentication_error"),
         404: ("not_found", "not_found_error"), 405: ("method_not_allowed", "invalid_request_error"),
         413: ("too_large", "invalid_request_error"), 422: ("invalid_request", "invalid_request_error"),
         429: ("overloaded", "rate_limit_error"), 500: ("internal", "server_error"),
         503: ("unavailable", "server_error"), 504: ("timeout", "timeout_error")}


class ApiError(Exception):
    """An HTTP error raised by a handler: status, message, optional headers (Retry-After, Allow)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.headers, self.param = status, message, headers or {}, param


def is_openai(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES)


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict:
    native, openai = KINDS.get(status, ("invalid_request" if status < 500 else "internal", "invalid_request_error"))
    if is_openai(path):
        return {"error": {"message": message, "type": openai, "param": param, "code": status}}
    return {"error": message, "type": native}


def error_response(path: str, status: int, message: str, headers: dict | None = None,
                   param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, param), status_code=status, headers=headers)


async def send_error(scope, send, status: int, message: str, headers: dict | None = None) -> None:
    """Answer from ASGI middleware, before any route ran."""
    body = json.dumps(error_body(scope.get("path", ""), status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def describe(exc: RequestValidationError) -> str:
    """One readable line per problem: ``body.max_new_tokens: Input should be greater than or equal to 1``."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    """Map every exception to its status and shape."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error_response(request.url.path, 422, describe(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # keeps Starlette's headers: a 405 carries Allow
        return error_response(request.url.path, exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(request.url.path, exc.status, exc.message, exc.headers, exc.param)

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return error_response(request.url.path, 400, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull):
        retry = str(request.app.state.config.retry_after_s)
        return error_response(request.url.path, 429, str(exc), {"Retry-After": retry})

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady):
        return error_response(request.url.path, 503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request failed")
        return error_response(request.url.path, 500, "internal error")


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, readable")
    type: str = Field(description="invalid_request, unauthorized, not_found, method_not_allowed, too_large, "
                      "overloaded, internal, unavailable, timeout")


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIErrorDetail


def documented(model: type[BaseModel], auth: bool, extra: tuple[int, ...] = ()) -> dict:
    """The ``responses=`` of a route: every error status it can send, with headers where they are set."""
    text = {400: "Input the model cannot take (too many tokens, an id outside the vocabulary)",
            401: "Missing or wrong API key", 413: "Body larger than the limit", 422: "Invalid request body",
            429: "Queue full, retry later", 500: "Internal error", 503: "Model loading or server shutting down",
            504: "Request timed out (its work was cancelled)", 404: "Unknown model"}
    codes = (413, 422, 500, 503) + extra + ((401,) if auth else ())
    out = {}
    for c in sorted(set(codes)):
        out[c] = {"model": model, "description": text.get(c, "Error")}
        if c == 429:
            out[c]["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
        if c == 401:
            out[c]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out
