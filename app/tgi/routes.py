"""The TGI-compatible routes: `/generate`, `/generate_stream`, TGI's `POST /` and `/info`.

Handlers stay thin: parse (pydantic, in `app/tgi/schemas.py`), pick the model, hand the prompts
to the serving layer (`app/serving/served_model.py`), and shape its answers as TGI does. Errors
leave in TGI's shape through `app/tgi/errors.py`, which the app factory registers for every
path outside `/v1`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from app.http.errors import ErrorResponse, documented_errors
from app.http.requests import client_gone, event_stream, served_model, service_state
from app.serving.errors import ClientDisconnectedError, InvalidRequestError, ServiceError
from app.serving.preparation import PreparedRequest
from app.serving.served_model import Answer, ServedModel
from app.serving.state import ServiceState
from app.tgi.errors import error_body
from app.tgi.schemas import (
    GenerateRequest,
    GenerateResponse,
    Info,
    ModelInfo,
    StreamResponse,
)

ERROR_RESPONSES = documented_errors(
    ErrorResponse,
    {
        400: "Body is not JSON or not UTF-8",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body too large",
        422: "Invalid parameters",
        429: "Queue full, retry later",
        503: "Model loading or server shutting down",
        504: "Request timed out",
    },
)
ModelQuery = Query(default=None, description="Served model to use (default: the first).")

router = APIRouter(tags=["TGI-compatible"])


def _full_text(body: GenerateRequest, prompt: str, answer: Answer) -> str:
    """TGI's `return_full_text`: the prompt as sent, then the generated text with the
    whitespace it starts with (as TGI keeps it: tidying strips it from the text alone)."""
    if not body.generation.return_full_text:
        return answer.text
    raw = "".join(token.text for token in answer.tokens if not token.special)
    leading = raw[: len(raw) - len(raw.lstrip())] if answer.text else ""
    return prompt + leading + answer.text


async def _prepared(
    request: Request, body: GenerateRequest, query_model: str | None
) -> tuple[ServedModel, list[PreparedRequest]]:
    """The model the request names (the query wins over the body) and its prepared prompts."""
    served = served_model(request, query_model or body.model)
    return served, await served.prepare_all(body.prompts, body.generation.to_options())


async def _generate(
    request: Request, body: GenerateRequest, query_model: str | None
) -> list[dict[str, Any]]:
    served, prepared = await _prepared(request, body, query_model)
    answers = await served.complete_all(prepared, client_gone(request))
    return [
        GenerateResponse.of(
            answer, body.generation.details, _full_text(body, p.prompt, answer)
        ).body()
        for p, answer in zip(prepared, answers, strict=True)
    ]


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data:{json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _stream(
    request: Request, body: GenerateRequest, query_model: str | None
) -> StreamingResponse:
    if not isinstance(body.inputs, str):
        raise InvalidRequestError("streaming takes one prompt: `inputs` must be a string")
    served, (prepared,) = await _prepared(request, body, query_model)
    events = served.stream(prepared)

    async def server_sent_events() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                answer = event.answer
                if answer is None:
                    yield _sse(StreamResponse.token_event(event).model_dump())
                    continue
                text = _full_text(body, prepared.prompt, answer)
                final = StreamResponse.final_event(event, body.generation.details, text)
                yield _sse(final.model_dump())
        except ClientDisconnectedError:
            return
        except ServiceError as error:
            yield _sse(error_body(str(error), error.error_type))

    return event_stream(server_sent_events())


@router.post(
    "/generate",
    response_model=GenerateResponse | list[GenerateResponse],
    responses=ERROR_RESPONSES,
    summary="Generate text (TGI); a list of inputs returns a list",
)
async def generate(request: Request, body: GenerateRequest, model: str | None = ModelQuery) -> Any:
    if body.stream:
        raise InvalidRequestError("`stream` is only read by POST /; use /generate_stream")
    responses = await _generate(request, body, model)
    return JSONResponse(responses[0] if isinstance(body.inputs, str) else responses)


@router.post(
    "/generate_stream",
    response_class=StreamingResponse,
    responses={200: {"model": StreamResponse, "content": {"text/event-stream": {}}}}
    | ERROR_RESPONSES,
    summary="Generate text as Server-Sent Events, one per token (TGI)",
)
async def generate_stream(
    request: Request, body: GenerateRequest, model: str | None = ModelQuery
) -> StreamingResponse:
    return await _stream(request, body, model)


@router.post(
    "/",
    response_model=list[GenerateResponse],
    responses={
        200: {
            "description": "A list of answers; with `stream: true`, server-sent events",
            "content": {"text/event-stream": {}},
        }
    }
    | ERROR_RESPONSES,
    summary="TGI's compatibility route: `stream` picks /generate_stream or /generate",
)
async def compat_generate(
    request: Request, body: GenerateRequest, model: str | None = ModelQuery
) -> Any:
    if body.stream:
        return await _stream(request, body, model)
    return JSONResponse(await _generate(request, body, model))


@router.get("/info", response_model=Info, responses=ERROR_RESPONSES, summary="Model and limits")
async def info(request: Request, model: str | None = ModelQuery) -> Info:
    return _info(service_state(request), model)


def _model_info(name: str, served: ServedModel) -> ModelInfo:
    engine_info = served.engine.info
    return ModelInfo(
        model_id=name,
        model_family=served.family.name,
        model_pipeline_tag=served.family.task.value,
        engine=engine_info.kind.value,
        quantization=engine_info.quantization,
        model_dtype=engine_info.quantization,
        model_device_type=engine_info.device,
        max_input_tokens=engine_info.max_input_tokens,
        max_total_tokens=engine_info.max_total_tokens,
    )


def _info(state: ServiceState, model: str | None) -> Info:
    served = state.model(model)
    settings = state.settings
    return Info(
        **_model_info(served.name, served).model_dump(),
        max_batch_size=served.max_batch_size,
        max_batch_total_tokens=served.max_batch_total_tokens,
        max_concurrent_requests=settings.max_queue_size,
        max_client_batch_size=settings.max_client_batch_size,
        max_stop_sequences=settings.max_stop_sequences,
        version=state.version,
        models=[_model_info(name, m) for name, m in state.models.items()],
    )
