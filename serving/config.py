"""Server settings: one frozen dataclass, defaults here, overridden by ``SELFISH_*`` environment variables
(read once at start-up) and then by ``selfish-serve`` flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from selfish_deploy.errors import UserError


@dataclass(frozen=True)
class ServeConfig:
    """Limits, security and batching of one server process (``GET /info`` shows the limits)."""

    model_name: str = "selfish"  # the id clients pass as "model" (OpenAI API) and /v1/models lists
    max_body_bytes: int = 1_000_000  # 413 above this, refused from Content-Length before the body is read
    max_input_tokens: int = 8192  # per prompt or scored text, after tokenization
    max_new_tokens: int = 1024  # per generated sequence
    max_queue: int = 256  # requests waiting for the inference worker; 429 with Retry-After above
    max_running: int = 64  # sequences generated together (the continuous batch)
    max_n: int = 16  # choices per OpenAI completion request (n x prompts are generated)
    max_prompts: int = 64  # prompts or texts in one request
    max_logprobs: int = 20  # top log-probabilities per position
    request_timeout_s: float = 120.0  # 504 after this (the work is cancelled)
    batching: bool = True  # off: one scoring request and one generated sequence at a time (benchmarks)
    api_key: str | None = None  # Bearer token required on every route but /health (and /metrics, see below)
    metrics_need_key: bool = False  # /metrics behind the API key as well
    cors_origins: tuple[str, ...] = ()  # no CORS headers unless origins are given
    retry_after_s: int = 1  # the Retry-After of a 429

    def __post_init__(self):
        positive = ("max_body_bytes", "max_input_tokens", "max_new_tokens", "max_queue", "max_running", "max_n",
                    "max_prompts", "request_timeout_s", "retry_after_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_logprobs < 0:
            raise UserError(f"max_logprobs must be >= 0, got {self.max_logprobs}")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("the API key must not be empty")

    def limits(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name.startswith("max_") or f.name in ("request_timeout_s", "batching")}


ENV = {f.name: "SELFISH_" + f.name.upper() for f in fields(ServeConfig)}  # e.g. SELFISH_MAX_QUEUE


def env_default(name: str, environ=None):
    """The default of one field, from its ``SELFISH_*`` variable if set (parsed as the field's type)."""
    environ = os.environ if environ is None else environ
    default = ServeConfig.__dataclass_fields__[name].default
    raw = environ.get(ENV[name])
    if raw is None or raw == "":
        return default
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise UserError(f"{ENV[name]} must be a boolean (1/0, true/false), got {raw!r}")
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, tuple):
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    if isinstance(default, (int, float)):
        try:
            return type(default)(raw)
        except ValueError:
            raise UserError(f"{ENV[name]} must be a number, got {raw!r}") from None
    return raw
