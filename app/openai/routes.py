"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions` and `/v1/models`.

They share everything with the TGI routes below the wire format: the same serving layer (family
prompt format, limits, batcher, cancellation, metrics labelled by route) and the same middleware
(request ids, access control). What is OpenAI's own lives in this folder: choices (`n`, lists of
prompts), text without the stop sequence, `stop`/`length` finish reasons, usage counts, logprobs,
the error shape and server-sent events that end with `data: [DONE]`. Chat messages become one
instruction by the rule in `app/core/chat.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel

from app.core.chat import ChatTurn, chat_to_instruction
from app.core.visible_text import VisibleText
from app.engines.base import GeneratedToken
from app.http.errors import documented_errors
from app.http.requests import event_stream, served_model, service_state
from app.openai.choices import (
    Choice,
    ChoicePlan,
    ChoiceStreams,
    complete_choices,
    plan_choices,
    started_streams,
)
from app.openai.errors import SERVER_ERROR, OpenAIError, from_service_error
from app.openai.render import (
    OPENAI_FINISH_REASONS,
    ChatRenderer,
    ChoiceResult,
    CompletionRenderer,
    Renderer,
)
from app.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
    OpenAIErrorResponse,
    OpenAIRequest,
    Usage,
)
from app.serving.errors import ModelNotFoundError, ServiceError
from app.serving.served_model import ServedModel

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible"])

_ERRORS = documented_errors(
    OpenAIErrorResponse,
    {
        400: "Invalid or unsupported parameter, body not JSON or not UTF-8",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body too large",
        429: "Queue full; retry after Retry-After seconds",
        503: "Model loading or server draining",
        504: "Request timed out",
    },
)
_STARTED_AT = int(time.time())  # the `created` time of every served model


def _system_fingerprint(served: ServedModel) -> str:
    """Changes whenever the backend that produces the tokens does (engine, precision, device)."""
    info = served.engine.info
    described = f"{served.name}|{info.kind.value}|{info.quantization}|{info.device}"
    return "fp_" + hashlib.sha256(described.encode()).hexdigest()[:12]


def _piece(token: GeneratedToken) -> str:
    """The text a token adds to the answer (special tokens such as eos add none)."""
    return "" if token.special else token.text


@dataclass
class ChoiceText:
    """One streamed choice's visible text, and its tokens not yet reported in a chunk."""

    visible: VisibleText
    pending: list[GeneratedToken] = field(default_factory=list)

    def push(self, token: GeneratedToken) -> str:
        self.pending.append(token)
        return self.visible.push(_piece(token))

    def take_tokens(self) -> list[GeneratedToken]:
        tokens, self.pending = self.pending, []
        return tokens


@dataclass(frozen=True)
class PlannedResponse:
    """A request ready to run: the model, its choices and how its objects are rendered."""

    served: ServedModel
    plan: ChoicePlan
    renderer: Renderer

    def visible_text(self, choice: Choice, tokens: Sequence[GeneratedToken] = ()) -> VisibleText:
        raw = "".join(_piece(token) for token in tokens)
        return VisibleText(self.served.family.prompt_format, choice.prepared.stop, raw=raw)

    def choice_texts(self) -> dict[int, ChoiceText]:
        return {choice.index: ChoiceText(self.visible_text(choice)) for choice in self.plan.choices}

    def usage(self, completion_tokens: int) -> Usage:
        prompt_tokens = self.plan.prompt_tokens
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


async def _plan(
    request: Request,
    body: OpenAIRequest,
    prompts: Sequence[str],
    max_tokens: int | None,
    renderer_class: type[Renderer],
    with_logprobs: bool,
) -> PlannedResponse:
    served = served_model(request, body.model)
    plan = await plan_choices(served, prompts, body.to_options(max_tokens), body.n)
    renderer = renderer_class(
        id=f"{renderer_class.id_prefix}-{uuid.uuid4().hex}",
        model=body.model,
        system_fingerprint=_system_fingerprint(served),
        with_logprobs=with_logprobs,
    )
    return PlannedResponse(served, plan, renderer)


async def _respond(planned: PlannedResponse, body: OpenAIRequest, request: Request) -> Response:
    """Run every choice; answer with one JSON object or a stream of server-sent events."""
    if body.stream:
        streams = await started_streams(planned.served, planned.plan)
        events = _events(planned, streams, include_usage=body.include_usage_chunk)
        return event_stream(events)
    answers = await complete_choices(planned.served, planned.plan, request)
    results = []
    for choice, answer in zip(planned.plan.choices, answers, strict=True):
        text = planned.visible_text(choice, answer.tokens).text
        reason = OPENAI_FINISH_REASONS[answer.finish_reason]
        results.append(ChoiceResult(choice.index, text, answer.tokens, reason))
    usage = planned.usage(sum(len(answer.tokens) for answer in answers))
    body_json = planned.renderer.response(results, usage).model_dump_json()
    return Response(body_json, media_type="application/json")


def _sse(payload: BaseModel | str) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else payload
    return f"data: {data}\n\n"


async def _events(
    planned: PlannedResponse, streams: ChoiceStreams, include_usage: bool
) -> AsyncIterator[str]:
    """Chunks as tokens arrive, the usage chunk if asked for, then `[DONE]`.

    A failure after the first byte can only be reported in the stream: as an `error` event,
    which the OpenAI clients raise as an APIError.
    """
    renderer = planned.renderer
    texts = planned.choice_texts()
    generated = 0
    try:
        for chunk in renderer.opening_chunks(sorted(texts)):
            yield _sse(chunk)
        async for index, event in streams.events():
            generated += 1
            text = texts[index]
            delta = text.push(event.token)
            if event.answer is not None:
                delta += text.visible.finish()
                reason = OPENAI_FINISH_REASONS[event.answer.finish_reason]
                yield _sse(renderer.chunk(ChoiceResult(index, delta, text.take_tokens(), reason)))
            elif delta:
                yield _sse(renderer.chunk(ChoiceResult(index, delta, text.take_tokens())))
        if include_usage:
            yield _sse(renderer.usage_chunk(planned.usage(generated)))
        yield _sse("[DONE]")
    except ServiceError as exc:
        yield _sse(json.dumps(from_service_error(exc).body()))
    except Exception:
        logger.exception("stream failed after it started")
        error = OpenAIError(500, "generation failed; see the server log", SERVER_ERROR)
        yield _sse(json.dumps(error.body()))
    finally:
        await streams.close()


@router.post("/completions", response_model=Completion, responses=_ERRORS)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """Complete each prompt; a prompt is an instruction, wrapped in the family's format."""
    planned = await _plan(
        request,
        body,
        body.prompts,
        body.max_tokens,
        CompletionRenderer,
        with_logprobs=body.logprobs is not None,
    )
    return await _respond(planned, body, request)


@router.post("/chat/completions", response_model=ChatCompletion, responses=_ERRORS)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Answer a conversation, flattened into one instruction (see `app/core/chat.py`)."""
    instruction = chat_to_instruction([ChatTurn(m.role, m.text) for m in body.messages])
    planned = await _plan(
        request,
        body,
        [instruction],
        body.max_new_tokens,
        ChatRenderer,
        with_logprobs=body.logprobs,
    )
    return await _respond(planned, body, request)


def _model_card(name: str) -> ModelCard:
    return ModelCard(id=name, created=_STARTED_AT, owned_by="lamini-serve")


@router.get("/models", response_model=ModelList, responses=_ERRORS)
async def list_models(request: Request) -> ModelList:
    """Every model this server serves (loaded or still loading)."""
    names = service_state(request).model_names
    return ModelList(data=[_model_card(name) for name in names])


@router.get("/models/{model:path}", response_model=ModelCard, responses=_ERRORS)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    """One served model, or 404 `model_not_found`."""
    if model not in service_state(request).model_names:
        raise ModelNotFoundError(f"model {model!r} is not served here")
    return _model_card(model)


@router.api_route(
    "/{path:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    include_in_schema=False,
)
async def unknown_openai_url(path: str, request: Request) -> Response:
    """Any other `/v1` URL or method: OpenAI's "Invalid URL" 404 instead of TGI's shape."""
    message = f"Invalid URL ({request.method} /v1/{path}); this server implements "
    message += "POST /v1/completions, POST /v1/chat/completions and GET /v1/models"
    return OpenAIError(404, message, code="unknown_url").response()
