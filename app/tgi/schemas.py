"""Request and response bodies of the TGI-compatible routes, as pydantic models.

They mirror Hugging Face Text Generation Inference's public OpenAPI schema (`GenerateRequest`,
`GenerateParameters`, `GenerateResponse`, `Details`, `StreamResponse`, `Token`; its
`ErrorResponse` is in `app/http/errors.py`, shared by every route outside `/v1`)
so the `text-generation` client and `huggingface_hub.InferenceClient` work unchanged. Those
clients send every TGI parameter, null or not: parameters this server does not implement are
accepted at their neutral value and rejected with a 422 otherwise, never silently ignored.
Everything that can be checked without knowing the model is checked here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from app.engines.base import GeneratedToken
from app.http.fields import FiniteFloat, HonourRule, check_honoured, require_encodable
from app.serving.preparation import GenerationOptions, sampling_for
from app.serving.served_model import Answer, StreamEvent

# Unsupported TGI parameters, accepted only at the values that mean "not used".
_NEUTRAL_RULES: dict[str, HonourRule] = {
    "best_of": HonourRule.only("best_of", 1),
    "typical_p": HonourRule.only("typical_p", 1.0),
    "watermark": HonourRule.only("watermark", False),
    "decoder_input_details": HonourRule.only("decoder_input_details", False),
    "top_n_tokens": HonourRule.only("top_n_tokens", 0),
    "grammar": HonourRule(lambda _value: False, "grammar is not supported (only null)"),
    "adapter_id": HonourRule.only("adapter_id", ""),
    "frequency_penalty": HonourRule.only("frequency_penalty", 0.0),
}


class _Strict(BaseModel):
    """Unknown fields and wrong JSON types are errors, as in TGI: a misspelt parameter or a
    `"max_new_tokens": "20"` must not be silently ignored or guessed at."""

    model_config = ConfigDict(extra="forbid", strict=True)


class GenerateParameters(_Strict):
    """TGI's generation parameters (plus `raw_prompt`, a lamini-serve extension)."""

    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Tokens to generate at most (default: server setting)."
    )
    do_sample: bool = Field(default=False, description="Sample instead of greedy decoding.")
    temperature: FiniteFloat | None = Field(
        default=None, ge=0, description="Sampling temperature (> 0 when sampling)."
    )
    top_p: FiniteFloat | None = Field(
        default=None, gt=0, le=1, description="Nucleus sampling mass, in (0, 1]."
    )
    top_k: int | None = Field(default=None, ge=0, description="Top-k filtering (0 = off).")
    repetition_penalty: FiniteFloat | None = Field(
        default=None, gt=0, description="Repetition penalty (1.0 = none)."
    )
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="Random seed for sampling."
    )
    stop: list[str] | None = Field(
        default=None, description="Stop generating when one of these strings is produced."
    )
    return_full_text: bool | None = Field(
        default=False, description="Prepend the prompt (as sent) to the generated text."
    )
    details: bool = Field(default=False, description="Return finish reason and tokens.")
    truncate: int | None = Field(
        default=None, ge=1, description="Keep only the last `truncate` input tokens."
    )
    raw_prompt: bool = Field(
        default=False,
        description="lamini-serve: send `inputs` to the model as is, without the family's "
        "prompt format (for already formatted prompts).",
    )
    best_of: int | None = Field(default=None, description="Unsupported: only null or 1.")
    typical_p: float | None = Field(default=None, description="Unsupported: only null or 1.0.")
    watermark: bool | None = Field(default=None, description="Unsupported: only false.")
    decoder_input_details: bool | None = Field(
        default=None, description="Unsupported: only false (prefill is always empty)."
    )
    top_n_tokens: int | None = Field(default=None, description="Unsupported: only null or 0.")
    grammar: Any = Field(default=None, description="Unsupported: only null.")
    adapter_id: str | None = Field(default=None, description="Unsupported: only null.")
    frequency_penalty: float | None = Field(
        default=None, description="Unsupported: only null or 0."
    )

    @field_validator("stop")
    @classmethod
    def _stop_sequences_are_text(cls, stop: list[str] | None) -> list[str] | None:
        if any(not sequence for sequence in stop or []):
            raise ValueError("stop sequences must not be empty strings")
        require_encodable(stop or [])
        return stop

    @field_validator(*_NEUTRAL_RULES, mode="after")
    @classmethod
    def _check_honoured(cls, value: Any, info: ValidationInfo) -> Any:
        return check_honoured(_NEUTRAL_RULES, value, info)

    @model_validator(mode="after")
    def _consistent(self) -> GenerateParameters:
        if self.do_sample and self.temperature is not None and self.temperature <= 0:
            raise ValueError("`temperature` must be strictly positive when sampling")
        return self

    @property
    def samples(self) -> bool:
        """TGI samples when asked to or when any sampling warper is set."""
        warped = (
            (self.temperature not in (None, 0.0, 1.0))
            or (self.top_k or 0) > 0
            or (self.top_p is not None and self.top_p < 1.0)
        )
        return self.do_sample or warped

    def to_options(self) -> GenerationOptions:
        """The route-agnostic generation request these parameters describe."""
        sampling = sampling_for(
            self.samples,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )
        return GenerationOptions(
            sampling=sampling,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(self.stop or ()),
            truncate=self.truncate,
            raw_prompt=self.raw_prompt,
        )


class GenerateRequest(_Strict):
    """`POST /generate` and `POST /generate_stream` (and `POST /` with `stream`)."""

    inputs: str | list[str] = Field(
        description="The instruction, or a list of instructions (`/generate` only).",
        examples=["Name three colours."],
    )
    # Declared nullable because it is accepted as null (some clients send it): null means the
    # defaults, and after validation `parameters` is never None.
    parameters: GenerateParameters | None = Field(default_factory=GenerateParameters)
    stream: bool = Field(default=False, description="`POST /` only: stream the answer (SSE).")
    model: str | None = Field(
        default=None, description="Which served model answers (default: the first one)."
    )

    @field_validator("parameters", mode="after")
    @classmethod
    def _null_means_defaults(cls, value: GenerateParameters | None) -> GenerateParameters:
        return GenerateParameters() if value is None else value

    @field_validator("inputs")
    @classmethod
    def _inputs_not_empty(cls, inputs: str | list[str]) -> str | list[str]:
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not texts:
            raise ValueError("`inputs` must not be an empty list")
        if any(not text.strip() for text in texts):
            raise ValueError("`inputs` cannot be empty")
        require_encodable(texts)
        return inputs

    @property
    def prompts(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)

    @property
    def generation(self) -> GenerateParameters:
        """The parameters (the defaults when null was sent)."""
        return self.parameters or GenerateParameters()


class Token(BaseModel):
    """One generated token (TGI `Token`)."""

    id: int
    text: str
    logprob: float | None
    special: bool

    @classmethod
    def of(cls, token: GeneratedToken) -> Token:
        return cls(
            id=token.id, text=token.text, logprob=token.finite_logprob, special=token.special
        )


class PrefillToken(BaseModel):
    """A prompt token (TGI `PrefillToken`); always empty here (`decoder_input_details`)."""

    id: int
    text: str
    logprob: float | None


class Details(BaseModel):
    """TGI `Details` of a finished generation."""

    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]


class GenerateResponse(BaseModel):
    """TGI `GenerateResponse`; `details` only when asked for."""

    generated_text: str
    details: Details | None = None

    @classmethod
    def of(cls, answer: Answer, with_details: bool, text: str) -> GenerateResponse:
        """`text` is the answer's text, or the full text when the caller asked for it."""
        return cls(
            generated_text=text,
            details=Details(
                finish_reason=answer.finish_reason.value,
                generated_tokens=len(answer.tokens),
                seed=answer.seed,
                prefill=[],
                tokens=[Token.of(token) for token in answer.tokens],
            )
            if with_details
            else None,
        )

    def body(self) -> dict[str, Any]:
        """TGI leaves `details` out when it was not asked for."""
        return self.model_dump(exclude={"details"} if self.details is None else set())


class StreamDetails(BaseModel):
    """TGI `StreamDetails`, sent with the last event."""

    finish_reason: str
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(BaseModel):
    """One SSE event of `/generate_stream` (TGI `StreamResponse`)."""

    index: int
    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None

    @classmethod
    def token_event(cls, event: StreamEvent) -> StreamResponse:
        return cls(index=event.index, token=Token.of(event.token))

    @classmethod
    def final_event(cls, event: StreamEvent, with_details: bool, text: str) -> StreamResponse:
        """The last event: its token plus the whole text and, when asked for, the details."""
        answer = event.answer
        assert answer is not None, "only the last event carries the answer"
        return cls(
            index=event.index,
            token=Token.of(event.token),
            generated_text=text,
            details=StreamDetails(
                finish_reason=answer.finish_reason.value,
                generated_tokens=len(answer.tokens),
                seed=answer.seed,
                input_length=answer.input_tokens,
            )
            if with_details
            else None,
        )


class ModelInfo(BaseModel):
    """What one served model is and what it accepts."""

    model_id: str
    model_family: str
    model_pipeline_tag: str
    engine: str
    quantization: str
    model_dtype: str
    model_device_type: str
    max_input_tokens: int
    max_total_tokens: int


class Info(ModelInfo):
    """`GET /info`: TGI's fields for the default (or `?model=`) model, plus every model."""

    max_batch_size: int
    max_batch_total_tokens: int
    max_concurrent_requests: int
    max_client_batch_size: int
    max_stop_sequences: int
    max_best_of: int = 1
    validation_workers: int = 1
    router: str = "lamini-serve"
    version: str
    models: list[ModelInfo]
