"""OpenAI-compatible request and response bodies, in vLLM's shapes (``/v1/completions``, ``/v1/models``,
``/tokenize``, ``/detokenize``, ``/tokenizer_info``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from .schemas import _Strict

MAX_SEED = 2**63 - 1
MAX_LOGIT_BIAS = 300  # token ids per request's logit_bias


class _Request(_Strict):
    @field_validator("temperature", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
                     mode="before", check_fields=False)
    @classmethod
    def allow_int(cls, v):  # strict mode would refuse 1 for a float
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


class StreamOptions(_Request):
    include_usage: bool = Field(False, description="A last chunk with usage and no choices")
    continuous_usage_stats: bool = False


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Request):
    model: str | None = Field(None, max_length=500, description="Served model id (GET /v1/models); optional")
    prompt: Prompt = Field(..., description="A string, a list of strings, token ids, or a list of token-id lists. "
                           "A string starts after a sentence-start <eos>; token ids are taken exactly as given.")
    max_tokens: int | None = Field(16, ge=0, le=2**31 - 1, description="Tokens to generate (0: echo/score only; "
                                   "null: the server's limit)")
    temperature: float = Field(1.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=2**31 - 1, description="vLLM extra: keep the k most likely (0 = all)")
    min_p: float = Field(0.0, ge=0.0, le=1.0, description="vLLM extra: drop tokens less likely than min_p times "
                         "the most likely one")
    min_tokens: int = Field(0, ge=0, le=2**31 - 1, description="vLLM extra: no <eos> (unless ignore_eos) or "
                            "stop_token_ids before this many tokens")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="vLLM extra")
    n: int = Field(1, ge=1, le=2**31 - 1, description="Choices per prompt (at most the server's max_n)")
    best_of: int | None = Field(None, ge=1, le=2**31 - 1, description="Candidates per prompt (n..the server's "
                                "max_n); the n with the highest total log-probability are returned, not streamed")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=2**31 - 1,
                                 description="Most likely tokens per position (plus the chosen one)")
    echo: bool = Field(False, description="Return the prompt too (with its log-probabilities under logprobs; the "
                       "first is null)")
    stop: str | list[str] | None = Field(None, description="Stop before these strings (at most 8)")
    stop_token_ids: list[int] | None = Field(None, max_length=64, description="vLLM extra")
    ignore_eos: bool = Field(True, description="vLLM extra; false stops after the first <eos>")
    seed: int | None = Field(None, ge=-MAX_SEED - 1, le=MAX_SEED,
                             description="Per-request seed; choice i uses seed + i")
    user: str | None = Field(None, max_length=500)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Subtracted from the logit of each token "
                                    "already generated")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="Subtracted from a token's logit once per "
                                     "time it was generated")
    logit_bias: dict[str, float] | None = Field(None, description="Token id (as a string) -> a bias in [-100, 100] "
                                                "added to its logit before sampling (at most 300 ids); the "
                                                "log-probabilities returned are the model's own")
    suffix: str | None = Field(None, description="Only null is supported")

    @field_validator("stop")
    @classmethod
    def few_stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 8 or any(len(s) > 200 for s in stops):
            raise ValueError("at most 8 stop strings of at most 200 characters")
        return v

    @field_validator("logit_bias")
    @classmethod
    def bias_of_token_ids(cls, v):
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} token ids")
        for key, bias in v.items():
            if not key.isascii() or not key.isdigit() or len(key) > 12:
                raise ValueError(f"keys must be token ids (digits), got {key!r}")
            if not -100 <= bias <= 100:  # NaN fails too
                raise ValueError(f"values must be in [-100, 100], got {bias} for token {key}")
        return v


class CompletionLogProbs(BaseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: Literal["stop", "length"] | None = None
    stop_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "selfish-deploy"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(_Request):
    model: str | None = Field(None, max_length=500)
    prompt: str = Field(..., max_length=100_000)
    add_special_tokens: bool = Field(True, description="Start with the sentence-start <eos>, as a completion "
                                     "prompt does")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(_Request):
    model: str | None = Field(None, max_length=500)
    tokens: list[int] = Field(..., max_length=100_000)


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    tokenizer_class: str
    eos_token: str
    eos_token_id: int
    bos_token: str = Field(description="String prompts start with this token (the sentence-start <eos>)")
    unk_token: str | None
    unk_token_id: int | None
    vocab_size: int
    model_max_length: int
    add_bos_token: bool
