"""The HTTP protocol: request and response bodies (pydantic). The engine never sees these objects."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 100_000
MAX_NEW_TOKENS = 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ScoreRequest(_Strict):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS,
                      description="Whitespace-tokenized text; each line is scored up to and including its <eos>.")

    @field_validator("text")
    @classmethod
    def has_words(cls, v: str) -> str:
        if not v.split():
            raise ValueError("text must contain at least one word")
        return v


class ScoreResponse(BaseModel):
    tokens: list[str] = Field(description="Scored tokens after vocabulary mapping (unknown words become <unk>)")
    logprobs: list[float] = Field(description="Natural-log probability of each token given the ones before it")
    log_likelihood: float = Field(description="Sum of logprobs")
    perplexity: float = Field(description="exp(-log_likelihood / len(tokens))")
    unknown_words: list[str] = Field(description="Input words that are not in the vocabulary")


class GenerateRequest(_Strict):
    prompt: str = Field("", max_length=MAX_TEXT_CHARS, description="Context words (may be empty)")
    max_new_tokens: int = Field(20, ge=1, le=MAX_NEW_TOKENS, description="Number of words to sample")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely words (0 = off)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (1 = off)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed for reproducible samples")
    stop_at_eos: bool = Field(False, description="Stop after the first <eos>")

    @field_validator("temperature", "top_p", mode="before")
    @classmethod
    def allow_int(cls, v):  # strict mode would reject 1 for a float field
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class GenerateResponse(BaseModel):
    text: str = Field(description="Generated words joined by spaces; <eos> becomes a newline")
    tokens: list[str]
    prompt_unknown_words: list[str]


class Health(BaseModel):
    status: str
    model: str
    arch: str
    vocab_size: int
    density: float
    device: str


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong, readable")
    type: str = Field(description="Error class: invalid_request, not_found, internal")
