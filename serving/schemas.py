"""The native HTTP protocol: request and response bodies (pydantic). The engine never sees these objects.

Limits that can be configured (tokens, ``max_new_tokens``) are checked by the handlers against the server's
settings (``GET /info``); the bounds here are the ones no setting changes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 100_000
MAX_NEW_TOKENS = 1024  # the default limit (--max-new-tokens)
MAX_STOP = 8  # stop strings per request


def encodable(v):
    """Strings (also inside lists and dicts) must be UTF-8: JSON can carry a lone surrogate (``"\\ud800"``),
    which no answer could echo."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (it has a lone surrogate)") from None
    elif isinstance(v, (list, tuple)):
        for x in v:
            encodable(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            encodable(k)
            encodable(x)
    return v


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _encodable(cls, v):
        return encodable(v)


def _has_words(v: str) -> str:
    if not v.split():
        raise ValueError("text must contain at least one word")
    return v


class ScoreRequest(_Strict):
    text: str | Annotated[list[str], Field(min_length=1)] = Field(
        ..., description="Whitespace-tokenized text, or a list of texts scored together; each line is scored up to "
        "and including its <eos>.")

    @field_validator("text")
    @classmethod
    def has_words(cls, v):
        texts = [v] if isinstance(v, str) else v
        if not texts:
            raise ValueError("give at least one text")
        for t in texts:
            if len(t) > MAX_TEXT_CHARS:
                raise ValueError(f"a text may have at most {MAX_TEXT_CHARS} characters")
            _has_words(t)
        return v


class ScoreResponse(BaseModel):
    tokens: list[str] = Field(description="Scored tokens after vocabulary mapping (unknown words become <unk>)")
    logprobs: list[float] = Field(description="Natural-log probability of each token given the ones before it")
    log_likelihood: float = Field(description="Sum of logprobs")
    perplexity: float = Field(description="exp(-log_likelihood / num_tokens)")
    num_tokens: int = Field(description="Number of scored tokens")
    unknown_words: list[str] = Field(description="Input words that are not in the vocabulary")


class ScoreListResponse(BaseModel):
    results: list[ScoreResponse] = Field(description="One result per text, in order")


class GenerateRequest(_Strict):
    prompt: str = Field("", max_length=MAX_TEXT_CHARS, description="Context words (may be empty)")
    max_new_tokens: int = Field(20, ge=1, le=2**31 - 1,
                                description="Number of words to sample (at most the server's limit, default 1024)")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 = greedy")
    top_k: int = Field(0, ge=0, le=2**31 - 1, description="Keep only the k most likely words (0 = off)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1 = off)")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="> 1 discourages repeated words (CTRL)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed for reproducible samples")
    stop: str | list[str] | None = Field(None, description="Stop before the first of these strings (at most 8)")
    stop_at_eos: bool = Field(False, description="Stop after the first <eos>")
    stream: bool = Field(False, description="Server-Sent Events: one 'token' event per word, then 'done'")

    @field_validator("temperature", "top_p", "repetition_penalty", mode="before")
    @classmethod
    def allow_int(cls, v):  # strict mode would reject 1 for a float field
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("stop")
    @classmethod
    def few_stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP or any(len(s) > 200 for s in stops):
            raise ValueError(f"at most {MAX_STOP} stop strings of at most 200 characters")
        return v


class GenerateResponse(BaseModel):
    text: str = Field(description="Generated words joined by spaces; <eos> becomes a newline")
    tokens: list[str]
    prompt_unknown_words: list[str]
    finish_reason: Literal["stop", "length"] | None = Field(description="stop: a stop string or <eos>; "
                                                            "length: max_new_tokens reached")


class TokenEventBody(BaseModel):
    """One SSE event of a streamed /v1/generate (``event: token``)."""

    token: str
    text: str = Field(description="New text safe to show (held back while it could become a stop string)")
    logprob: float


class Health(BaseModel):
    status: str
    model: str
    arch: str | None = None
    vocab_size: int | None = None
    density: float | None = None
    device: str | None = None
