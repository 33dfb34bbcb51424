"""Pydantic models that mirror OpenAI's completions, chat completions and models API.

Validation lives here, as in vLLM's protocol module: every field OpenAI defines is declared, so
a request that sets one we cannot honour (tools, logit_bias, penalties, best_of...) fails in
validation with the parameter named, instead of being silently ignored; fields OpenAI does not
define are rejected the same way OpenAI rejects them. `app/openai/errors.py` turns the
validation errors into OpenAI's error shape.

Two extensions that vLLM also accepts (send them with the client's `extra_body`): `top_k` and
`repetition_penalty` - the LaMini model cards recommend a repetition penalty.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from app.http.fields import (
    FiniteFloat,
    HonourRule,
    check_honoured,
    invalid,
    require_encodable,
    unsupported,
)
from app.serving.preparation import GenerationOptions, sampling_for

MAX_STOP_SEQUENCES = 4  # OpenAI's limit
OpenAIFinishReason = Literal["stop", "length"]


def _is_zero(value: Any) -> bool:
    return value == 0


def _is_empty(value: Any) -> bool:
    return not value


_COMMON_RULES: dict[str, HonourRule] = {
    "frequency_penalty": HonourRule(_is_zero, "frequency_penalty is not supported (only 0)"),
    "presence_penalty": HonourRule(_is_zero, "presence_penalty is not supported (only 0)"),
    "logit_bias": HonourRule(_is_empty, "logit_bias is not supported"),
}


class StreamOptions(BaseModel):
    """`stream_options`: only `include_usage` changes anything here."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = Field(
        default=None, description="Accepted and ignored: chunks are never padded."
    )


class OpenAIRequest(BaseModel):
    """Fields shared by completions and chat completions, and the rules that guard them.

    Subclasses add their own entries to `unhonoured_rules`; a field listed there is accepted
    only with a value we can honour (or unset), otherwise the request fails naming it.
    """

    model_config = ConfigDict(extra="forbid")
    unhonoured_rules: ClassVar[dict[str, HonourRule]] = _COMMON_RULES

    model: str = Field(min_length=1, description="A model id from GET /v1/models.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    temperature: FiniteFloat | None = Field(
        default=None, ge=0, le=2, description="0 = greedy decoding; default 1 (sampling)."
    )
    top_p: FiniteFloat | None = Field(
        default=None, gt=0, le=1, description="Nucleus sampling mass."
    )
    n: int = Field(default=1, ge=1, description="Choices to generate for each prompt.")
    stop: str | list[str] | None = Field(
        default=None, description=f"Up to {MAX_STOP_SEQUENCES} sequences that end generation."
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling."
    )
    stream: bool = Field(default=False, description="Stream server-sent events.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="Accepted and ignored.")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    top_k: int | None = Field(
        default=None, ge=0, description="Extension (as in vLLM): sample from the k best; 0 = off."
    )
    repetition_penalty: FiniteFloat | None = Field(
        default=None, gt=0, le=10, description="Extension (as in vLLM): 1 = no penalty."
    )

    @field_validator("n", "stream", "max_tokens", mode="before")
    @classmethod
    def _null_means_default(cls, value: Any, info: ValidationInfo) -> Any:
        """OpenAI's schema makes these nullable, and some clients do send null."""
        return _default_if_null(cls, value, info)

    @field_validator("stop", mode="before")
    @classmethod
    def _check_stop(cls, value: Any) -> Any:
        """Stop sequences: a string or a short list of non-empty strings."""
        require_encodable(value if isinstance(value, list) else [value])
        if value is None or (isinstance(value, str) and value):
            return value
        if isinstance(value, list) and all(isinstance(s, str) and s for s in value):
            if len(value) > MAX_STOP_SEQUENCES:
                raise invalid(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
            return value
        raise invalid("stop must be a non-empty string or a list of non-empty strings")

    @field_validator("frequency_penalty", "presence_penalty", "logit_bias", mode="after")
    @classmethod
    def _check_honoured(cls, value: Any, info: ValidationInfo) -> Any:
        return check_honoured(cls.unhonoured_rules, value, info)

    @field_validator("stream_options", mode="after")
    @classmethod
    def _stream_options_need_stream(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and not info.data.get("stream"):
            raise invalid("stream_options is only allowed when stream is true")
        return value

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def to_options(self, max_new_tokens: int | None) -> GenerationOptions:
        """OpenAI semantics: temperature 0 is greedy, anything else (default 1) samples."""
        temperature = 1.0 if self.temperature is None else self.temperature
        samples = temperature > 0
        sampling = sampling_for(
            samples,
            temperature=temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )
        return GenerationOptions(
            sampling=sampling, max_new_tokens=max_new_tokens, stop=self.stop_sequences
        )

    @property
    def include_usage_chunk(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


def _default_if_null(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    if value is None and info.field_name is not None:
        return model.model_fields[info.field_name].default
    return value


# --- completions -----------------------------------------------------------------------------


def _is_at_most_one(value: Any) -> bool:
    return value <= 1


_COMPLETION_RULES: dict[str, HonourRule] = {
    **_COMMON_RULES,
    "best_of": HonourRule(
        _is_at_most_one, "best_of is not supported (only 1); use n for more choices"
    ),
    "echo": HonourRule(lambda value: value is False, "echo is not supported"),
    "suffix": HonourRule(_is_empty, "suffix (insertion) is not supported"),
    "logprobs": HonourRule(
        _is_zero,
        "only logprobs=0 is supported (the sampled token's log probability, no alternatives)",
    ),
}


class CompletionRequest(OpenAIRequest):
    """`POST /v1/completions`: the prompt is an instruction, wrapped in the family's format."""

    unhonoured_rules: ClassVar[dict[str, HonourRule]] = _COMPLETION_RULES

    prompt: str | list[str] = Field(description="One instruction, or a list of them.")
    max_tokens: int | None = Field(default=16, ge=1, description="Most tokens (default 16).")
    best_of: int | None = Field(default=None, ge=1)
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = Field(
        default=None, ge=0, le=5, description="0 = the sampled tokens' log probabilities."
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        """Text prompts only: token-id prompts would bypass the family's prompt format."""
        require_encodable(value if isinstance(value, list) else [value])
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(p, str) for p in value):
            return value
        if isinstance(value, list) and value and all(isinstance(p, int | list) for p in value):
            raise unsupported("token-id prompts are not supported; send the prompt as text")
        raise invalid("prompt must be a string or a non-empty list of strings")

    @field_validator("best_of", "echo", "suffix", "logprobs", mode="after")
    @classmethod
    def _check_completion_honoured(cls, value: Any, info: ValidationInfo) -> Any:
        return check_honoured(cls.unhonoured_rules, value, info)

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: OpenAIFinishReason | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """A completion; streamed chunks have the same shape (OpenAI's legacy API)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- chat completions ------------------------------------------------------------------------


class TextContentPart(BaseModel):
    """The only content part these text models can read."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


MessageRole = Literal["system", "developer", "user", "assistant"]
_UNREADABLE_FIELDS = ("tool_calls", "tool_call_id", "function_call", "audio")


class ChatMessage(BaseModel):
    """One input message. Tool and function messages cannot be honoured by these models."""

    model_config = ConfigDict(extra="forbid")

    role: MessageRole
    content: str | list[TextContentPart] | None = None
    name: str | None = Field(default=None, description="Accepted and ignored.")
    refusal: str | None = Field(default=None, description="Accepted and ignored.")
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None
    function_call: Any | None = None
    audio: Any | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _check_role(cls, value: Any) -> Any:
        if value in ("tool", "function"):
            raise unsupported(f"{value} messages are not supported: these models cannot use tools")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _check_content_parts(cls, value: Any) -> Any:
        if isinstance(value, list):
            for part in value:
                kind = part.get("type") if isinstance(part, dict) else None
                require_encodable([part.get("text") if isinstance(part, dict) else None])
                if kind not in (None, "text"):
                    raise unsupported(
                        f"content parts of type {kind!r} are not supported; send text"
                    )
        require_encodable([value])
        return value

    @field_validator(*_UNREADABLE_FIELDS, mode="after")
    @classmethod
    def _reject_unreadable_fields(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise unsupported(f"{info.field_name} is not supported: these models read text only")
        return value

    @property
    def text(self) -> str:
        """The message's text; several text parts are joined by newlines."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str


def _is_text_format(value: Any) -> bool:
    return value.type == "text"


def _no_tool_choice(value: Any) -> bool:
    return value == "none"


_CHAT_RULES: dict[str, HonourRule] = {
    **_COMMON_RULES,
    "tools": HonourRule(_is_empty, "tools are not supported: these models cannot call tools"),
    "functions": HonourRule(
        _is_empty, "functions are not supported: these models cannot call tools"
    ),
    "tool_choice": HonourRule(_no_tool_choice, "tool_choice is not supported (only 'none')"),
    "function_call": HonourRule(_no_tool_choice, "function_call is not supported (only 'none')"),
    "response_format": HonourRule(_is_text_format, "only response_format type 'text' is supported"),
    "top_logprobs": HonourRule(_is_zero, "top_logprobs is not supported (only 0)"),
    "modalities": HonourRule(
        lambda value: value == ["text"], "only the 'text' modality is supported"
    ),
    "audio": HonourRule(_is_empty, "audio output is not supported"),
    "prediction": HonourRule(_is_empty, "predicted outputs are not supported"),
    "web_search_options": HonourRule(_is_empty, "web search is not supported"),
    "reasoning_effort": HonourRule(
        _is_empty, "reasoning_effort is not supported: not a reasoning model"
    ),
    "verbosity": HonourRule(_is_empty, "verbosity is not supported"),
    "store": HonourRule(lambda value: value is False, "store is not supported: nothing is stored"),
}


class ChatCompletionRequest(OpenAIRequest):
    """`POST /v1/chat/completions`: messages become one instruction (see `app/core/chat.py`)."""

    unhonoured_rules: ClassVar[dict[str, HonourRule]] = _CHAT_RULES

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens to generate (wins over max_tokens)."
    )
    logprobs: bool = Field(default=False, description="Return the sampled tokens' logprobs.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any | None = None
    function_call: Any | None = None
    parallel_tool_calls: bool | None = Field(default=None, description="Accepted and ignored.")
    response_format: ResponseFormat | None = None
    modalities: list[str] | None = None
    audio: Any | None = None
    prediction: Any | None = None
    web_search_options: Any | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = Field(default=None, description="Accepted and ignored.")
    service_tier: str | None = Field(default=None, description="Accepted and ignored.")
    safety_identifier: str | None = Field(default=None, description="Accepted and ignored.")
    prompt_cache_key: str | None = Field(default=None, description="Accepted and ignored.")

    @field_validator(
        "tools",
        "functions",
        "tool_choice",
        "function_call",
        "response_format",
        "top_logprobs",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "reasoning_effort",
        "verbosity",
        "store",
        mode="after",
    )
    @classmethod
    def _check_chat_honoured(cls, value: Any, info: ValidationInfo) -> Any:
        return check_honoured(cls.unhonoured_rules, value, info)

    @field_validator("logprobs", mode="before")
    @classmethod
    def _null_logprobs_means_false(cls, value: Any, info: ValidationInfo) -> Any:
        return _default_if_null(cls, value, info)

    @field_validator("messages", mode="after")
    @classmethod
    def _last_message_is_an_instruction(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        """These models answer one instruction: the conversation must end with a user turn."""
        last = value[-1]
        if last.role != "user":
            raise invalid(f"the last message must come from the user (got {last.role!r})")
        if not last.text.strip():
            raise invalid("the last user message is empty")
        return value

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class TopLogprob(BaseModel):
    token: str
    logprob: float | None
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    token: str
    logprob: float | None = Field(description="null when the engine cannot score tokens.")
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: OpenAIFinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """What a chunk adds; fields it does not change are left out, as OpenAI does."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unchanged(self, serialize: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in serialize(self).items() if value is not None}


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: OpenAIFinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- models and errors -----------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""

    error: OpenAIErrorDetail
