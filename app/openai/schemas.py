"""Pydantic models that mirror OpenAI's completions, chat completions and models API.

Validation lives here, as in vLLM's protocol module: every field OpenAI defines is declared, so
a request that sets one we cannot honour (tools, logit_bias, penalties, best_of...) fails in
validation with the parameter named, instead of being silently ignored; fields OpenAI does not
define are rejected the same way OpenAI rejects them. `app/openai/errors.py` turns the
validation errors into OpenAI's error shape.

Extensions that vLLM also accepts (send them with the client's `extra_body`), with vLLM's
meaning: `top_k` (-1 or 0 = off), `repetition_penalty` (the LaMini model cards recommend one),
`min_tokens`, `ignore_eos` and `stream_options.continuous_usage_stats` - what benchmark clients
such as guidellm and aiperf send for fixed-length outputs and per-chunk token counts.
"""

from __future__ import annotations

import dataclasses
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

from app.engines.grammar import ResponseGrammar
from app.http.fields import (
    FiniteFloat,
    HonourRule,
    check_honoured,
    invalid,
    require_encodable,
    unsupported,
)
from app.serving.preparation import GenerationOptions, Prompt, sampling_for

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

    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = False
    continuous_usage_stats: bool | None = Field(
        default=False, description="Extension (as in vLLM): usage so far on every chunk."
    )
    include_obfuscation: bool | None = Field(
        default=None, description="Accepted and ignored: chunks are never padded."
    )


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: the schema the answer must follow."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(default="response", max_length=64)
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = Field(default=None, description="Always strict: decoding is masked.")


class ResponseFormat(BaseModel):
    """`response_format`: plain text, any JSON object, or JSON that follows a schema (the two
    JSON formats are enforced by constrained decoding, on engines that expose the logits)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("text", "json_object", "json_schema"):
            raise unsupported(
                f"response_format type {value!r} is not supported "
                "(only 'text', 'json_object' and 'json_schema')"
            )
        return value

    @field_validator("json_schema", mode="after")
    @classmethod
    def _schema_for_json_schema(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("type") != "json_schema":
            raise invalid("json_schema is only allowed when type is 'json_schema'")
        return value

    @property
    def grammar(self) -> ResponseGrammar | None:
        """What constrained decoding must enforce (None: plain text)."""
        if self.type == "json_schema" and self.json_schema is not None:
            return ResponseGrammar(self.json_schema.json_schema)
        return ResponseGrammar() if self.type == "json_object" else None


class OpenAIRequest(BaseModel):
    """Fields shared by completions and chat completions, and the rules that guard them.

    Subclasses add their own entries to `unhonoured_rules`; a field listed there is accepted
    only with a value we can honour (or unset), otherwise the request fails naming it.
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    unhonoured_rules: ClassVar[dict[str, HonourRule]] = _COMMON_RULES

    model: str = Field(min_length=1, description="A model id from GET /v1/models.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most tokens to generate.")
    temperature: FiniteFloat | None = Field(
        default=None, ge=0, le=2, description="0 = greedy decoding; default 1 (sampling)."
    )
    top_p: FiniteFloat | None = Field(
        default=None, gt=0, le=1, description="Nucleus sampling mass."
    )
    # n and stream are nullable in OpenAI's schema (null means the default, see below).
    n: int | None = Field(default=1, ge=1, description="Choices to generate for each prompt.")
    stop: str | list[str] | None = Field(
        default=None, description=f"Up to {MAX_STOP_SEQUENCES} sequences that end generation."
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling."
    )
    stream: bool | None = Field(default=False, description="Stream server-sent events.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, description="Accepted and ignored.")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    top_k: int | None = Field(
        default=None,
        ge=-1,
        description="Extension (as in vLLM): sample from the k best; -1 or 0 = off.",
    )
    repetition_penalty: FiniteFloat | None = Field(
        default=None, gt=0, le=10, description="Extension (as in vLLM): 1 = no penalty."
    )
    min_tokens: int | None = Field(
        default=None,
        ge=0,
        strict=True,
        description="Extension (as in vLLM): fewest tokens to generate.",
    )
    ignore_eos: bool | None = Field(
        default=False,
        strict=True,
        description="Extension (as in vLLM): never stop at end-of-sequence, generate max_tokens.",
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="`json_object` / `json_schema`: constrained decoding (transformers engine).",
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

    @field_validator("response_format", mode="after")
    @classmethod
    def _complete_response_format(cls, value: ResponseFormat | None) -> Any:
        if value is not None and value.type == "json_schema" and value.json_schema is None:
            raise invalid("response_format type 'json_schema' needs a `json_schema` object")
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
            top_k=max(self.top_k or 0, 0),
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )
        return GenerationOptions(
            sampling=dataclasses.replace(sampling, min_new_tokens=self.min_tokens or 0),
            max_new_tokens=max_new_tokens,
            stop=self.stop_sequences,
            ignore_eos=bool(self.ignore_eos),
            grammar=None if self.response_format is None else self.response_format.grammar,
        )

    @property
    def include_usage_chunk(self) -> bool:
        return self.stream_options is not None and bool(self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        """vLLM's `continuous_usage_stats`: every chunk carries the usage so far."""
        options = self.stream_options
        return options is not None and bool(options.continuous_usage_stats)


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
    "suffix": HonourRule(_is_empty, "suffix (insertion) is not supported"),
}
MAX_LOGPROBS = 20  # vLLM's default limit of alternatives per token (OpenAI's: 5)


class CompletionRequest(OpenAIRequest):
    """`POST /v1/completions`: a text prompt is an instruction, wrapped in the family's format;
    token ids (and any prompt with `echo`) go to the model as they are."""

    unhonoured_rules: ClassVar[dict[str, HonourRule]] = _COMPLETION_RULES

    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="One instruction, a list of them, token ids, or a list of token-id lists.",
        examples=["Name three colours."],
    )
    max_tokens: int | None = Field(default=16, ge=1, description="Most tokens (default 16).")
    best_of: int | None = Field(default=None, ge=1)
    echo: bool | None = Field(
        default=False,
        strict=True,
        description="Prepend the prompt (scored as sent, without the prompt format) to the text.",
    )
    suffix: str | None = None
    logprobs: int | None = Field(
        default=None,
        ge=0,
        le=MAX_LOGPROBS,
        strict=True,
        description="Log probabilities of each token and of its `logprobs` likeliest alternatives.",
    )

    @field_validator("prompt", mode="before")
    @classmethod
    def _check_prompt(cls, value: Any) -> Any:
        """Text, a list of texts, token ids or a list of token-id lists - never empty."""
        require_encodable(value if isinstance(value, list) else [value])
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value:
            if all(isinstance(p, str) for p in value) or _is_token_ids(value):
                return value
            if all(_is_token_ids(p) for p in value):
                return value
        raise invalid(
            "prompt must be a string, a non-empty list of strings, a non-empty list of "
            "token ids or a list of such lists"
        )

    @field_validator("best_of", "suffix", mode="after")
    @classmethod
    def _check_completion_honoured(cls, value: Any, info: ValidationInfo) -> Any:
        return check_honoured(cls.unhonoured_rules, value, info)

    @field_validator("echo", mode="after")
    @classmethod
    def _echo_is_not_streamed(cls, value: Any, info: ValidationInfo) -> Any:
        if value and info.data.get("stream"):
            raise unsupported("echo is not supported with stream; send stream: false")
        return value

    @field_validator("logprobs", mode="after")
    @classmethod
    def _alternatives_are_not_streamed(cls, value: Any, info: ValidationInfo) -> Any:
        if value and info.data.get("stream"):
            raise unsupported(
                "logprobs above 0 (alternatives) are not supported with stream; send "
                "logprobs: 0 or stream: false"
            )
        return value

    @property
    def prompts(self) -> list[Prompt]:
        prompt = self.prompt
        if isinstance(prompt, str) or _is_token_ids(prompt):
            return [prompt]
        return list(prompt)

    def to_options(self, max_new_tokens: int | None) -> GenerationOptions:
        """`echo` scores and continues the prompt as sent: no prompt format around it."""
        options = super().to_options(max_new_tokens)
        return dataclasses.replace(options, raw_prompt=bool(self.echo))


def _is_token_ids(value: Any) -> bool:
    """A non-empty list of non-negative ints (booleans are not token ids)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    )


class CompletionLogprobs(BaseModel):
    """Legacy completions logprobs: parallel lists, one entry per token (with `echo` the
    prompt's tokens first; the first prompt token has no log probability)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None = None
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

    model_config = ConfigDict(extra="ignore", strict=True)

    type: Literal["text"]
    text: str


MessageRole = Literal["system", "developer", "user", "assistant"]
_UNREADABLE_FIELDS = ("tool_calls", "tool_call_id", "function_call", "audio")


class ChatMessage(BaseModel):
    """One input message. Tool and function messages cannot be honoured by these models."""

    model_config = ConfigDict(extra="forbid", strict=True)

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

    messages: list[ChatMessage] = Field(
        min_length=1, examples=[[{"role": "user", "content": "Name three colours."}]]
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens to generate (wins over max_tokens)."
    )
    logprobs: bool = Field(default=False, description="Return the sampled tokens' logprobs.")
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Alternatives per token (needs logprobs: true)."
    )
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any | None = None
    function_call: Any | None = None
    parallel_tool_calls: bool | None = Field(default=None, description="Accepted and ignored.")
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

    @field_validator("top_logprobs", mode="after")
    @classmethod
    def _alternatives_need_logprobs(cls, value: Any, info: ValidationInfo) -> Any:
        if value and not info.data.get("logprobs"):
            raise invalid("top_logprobs needs logprobs: true")
        if value and info.data.get("stream"):
            raise unsupported(
                "top_logprobs above 0 is not supported with stream; send stream: false"
            )
        return value

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
