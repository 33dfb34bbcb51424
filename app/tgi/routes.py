"""The TGI-compatible HTTP routes and the one place errors become HTTP responses.

Handlers stay thin: parse (pydantic, in `app/schemas.py`), pick the model, hand the prompts to
the generation layer (`app/generation.py`), and shape its completions as TGI does. Every error
becomes TGI's `{"error": ..., "error_type": ...}` body here, so a client never sees a bare 500
or an HTML page.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from app.http.middleware import MODEL_STATE_KEY, client_gone
from app.serving.errors import InvalidRequestError, OverloadedError, ServiceError
from app.serving.metrics import CONTENT_TYPE
from app.serving.served_model import (
    ClientDisconnectedError,
    Completion,
    PreparedRequest,
    ServedModel,
)
from app.tgi.schemas import (
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Info,
    ModelInfo,
    StreamResponse,
)

if TYPE_CHECKING:
    from app.serving.state import ServiceState

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Body is not JSON or not UTF-8"),
        (404, "Unknown model"),
        (413, "Body too large"),
        (422, "Invalid parameters"),
        (429, "Queue full, retry later"),
        (503, "Model loading or server shutting down"),
        (504, "Request timed out"),
    )
}
ModelQuery = Query(default=None, description="Served model to use (default: the first).")


def _state(request: Request) -> ServiceState:
    return request.app.state.service


def _error_response(error: ServiceError, retry_after_s: int) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if isinstance(error, OverloadedError) else None
    body = ErrorResponse(error=str(error), error_type=error.error_type)
    return JSONResponse(body.model_dump(), status_code=error.status_code, headers=headers)


def _validation_message(errors: list[Any]) -> tuple[int, str]:
    """One readable line from pydantic's errors (invalid JSON is a 400, the rest a 422)."""
    for error in errors:
        if error.get("type") == "json_invalid":
            return 400, f"the request body is not valid JSON: {error.get('ctx', {}).get('error')}"
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        if error.get("type") == "model_attributes_type" and not location:
            parts.append("the body must be a JSON object (send Content-Type: application/json)")
        elif error.get("type") == "extra_forbidden":
            parts.append(f"`{location}` is not a known parameter")
        else:
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"`{location}`: {message}" if location else message)
    return 422, "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to TGI's error body."""

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, error: ServiceError) -> Response:
        return _error_response(error, _state(request).settings.retry_after_s)

    @app.exception_handler(ClientDisconnectedError)
    async def client_gone(_request: Request, _error: ClientDisconnectedError) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> Response:
        status, message = _validation_message(list(error.errors()))
        body = ErrorResponse(error=message, error_type="validation")
        return JSONResponse(body.model_dump(), status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> Response:
        error_type = "not_found" if error.status_code == 404 else "validation"
        message = str(error.detail)
        if error.status_code == 400 and error.__cause__ is not None:  # FastAPI's JSON parsing
            message = f"the request body could not be parsed as JSON: {error.__cause__}"
        body = ErrorResponse(error=message, error_type=error_type)
        return JSONResponse(body.model_dump(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> Response:
        logger.exception("unhandled error")
        message = f"internal error: {type(error).__name__}"
        body = ErrorResponse(error=message, error_type="generation")
        return JSONResponse(body.model_dump(), status_code=500)


# --- the generation routes ----------------------------------------------------------------------


def _resolve(request: Request, body: GenerateRequest, query_model: str | None) -> ServedModel:
    """The model the request names (query wins over body) and record it for the metrics."""
    served = _state(request).model(query_model or body.model)
    request.scope.setdefault("state", {})[MODEL_STATE_KEY] = served.name
    return served


def _full_text(body: GenerateRequest, prompt: str, completion: Completion) -> str:
    """TGI's `return_full_text`: the prompt as sent, then the generated text."""
    return prompt + completion.text if body.parameters.return_full_text else completion.text


async def _prepare_all(served: ServedModel, body: GenerateRequest) -> list[PreparedRequest]:
    options = body.parameters.to_options()
    limit = served.settings.max_client_batch_size
    if len(body.prompts) > limit:
        raise InvalidRequestError(
            f"`inputs` has {len(body.prompts)} prompts; at most {limit} are allowed per request "
            "(max_client_batch_size)"
        )
    return list(await asyncio.gather(*(served.prepare(p, options) for p in body.prompts)))


async def _generate(
    request: Request, body: GenerateRequest, query_model: str | None
) -> list[dict[str, Any]]:
    served = _resolve(request, body, query_model)
    prepared = await _prepare_all(served, body)
    completions = await served.complete_all(prepared, client_gone(request))
    return [
        GenerateResponse.of(
            completion, body.parameters.details, _full_text(body, p.prompt, completion)
        ).body()
        for p, completion in zip(prepared, completions, strict=True)
    ]


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data:{json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _stream(
    request: Request, body: GenerateRequest, query_model: str | None
) -> StreamingResponse:
    if not isinstance(body.inputs, str):
        raise InvalidRequestError("streaming takes one prompt: `inputs` must be a string")
    served = _resolve(request, body, query_model)
    (prepared,) = await _prepare_all(served, body)
    events = served.stream(prepared)

    async def server_sent_events() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                completion = event.completion
                if completion is None:
                    yield _sse(StreamResponse.token_event(event).model_dump())
                    continue
                final = StreamResponse.final_event(
                    event, body.parameters.details, _full_text(body, prepared.prompt, completion)
                )
                yield _sse(final.model_dump())
        except ClientDisconnectedError:
            return
        except ServiceError as error:
            yield _sse(ErrorResponse(error=str(error), error_type=error.error_type).model_dump())

    return StreamingResponse(
        server_sent_events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def install_routes(app: FastAPI) -> None:
    install_error_handlers(app)

    @app.post(
        "/generate",
        response_model=GenerateResponse | list[GenerateResponse],
        responses=ERROR_RESPONSES,
        summary="Generate text (TGI); a list of inputs returns a list",
    )
    async def generate(
        request: Request, body: GenerateRequest, model: str | None = ModelQuery
    ) -> Any:
        if body.stream:
            raise InvalidRequestError("`stream` is only read by POST /; use /generate_stream")
        responses = await _generate(request, body, model)
        return JSONResponse(responses[0] if isinstance(body.inputs, str) else responses)

    @app.post(
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

    @app.post(
        "/",
        response_model=list[GenerateResponse],
        responses=ERROR_RESPONSES,
        summary="TGI's compatibility route: `stream` picks /generate_stream or /generate",
    )
    async def compat_generate(
        request: Request, body: GenerateRequest, model: str | None = ModelQuery
    ) -> Any:
        if body.stream:
            return await _stream(request, body, model)
        return JSONResponse(await _generate(request, body, model))

    @app.get("/info", response_model=Info, responses=ERROR_RESPONSES, summary="Model and limits")
    async def info(request: Request, model: str | None = ModelQuery) -> Info:
        return _info(_state(request), model)

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        responses={503: {"model": ErrorResponse}},
        summary="Readiness: 200 only when every configured model is loaded",
    )
    async def ready(request: Request) -> Response:
        state = _state(request)
        if state.ready:
            return JSONResponse({"status": "ready", "models": state.model_names})
        if state.draining:
            reason = "the server is shutting down"
        elif state.load_error:
            reason = f"a model failed to load: {state.load_error}"
        else:
            missing = [name for name in state.model_names if name not in state.models]
            reason = f"still loading: {', '.join(missing)}"
        return JSONResponse(
            ErrorResponse(error=reason, error_type="unavailable").model_dump(), status_code=503
        )

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE)


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
        max_batch_size=settings.max_batch_size,
        max_batch_total_tokens=settings.max_batch_tokens,
        max_concurrent_requests=settings.max_queue_size,
        max_client_batch_size=settings.max_client_batch_size,
        max_stop_sequences=settings.max_stop_sequences,
        version=state.version,
        models=[_model_info(name, m) for name, m in state.models.items()],
    )
