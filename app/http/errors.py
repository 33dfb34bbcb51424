"""The one place an error becomes an HTTP response, in the shape of the API that was called.

Each wire API has its own error body (TGI's `{"error", "error_type"}`, OpenAI's `{"error":
{"message", "type", "param", "code"}}`), and a client can only read its own. So the shape is
chosen by the request's path, never by who raised: an `ErrorShape` per API, registered with
`ErrorShapes` by the app factory, renders the service's typed errors, request validation
errors, routing errors and unexpected exceptions. The app-wide exception handlers and the
middleware that answers before any route (body limits, API keys) all go through it.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.serving.errors import (
    AuthenticationError,
    ClientDisconnectedError,
    GenerationError,
    OverloadedError,
    ServiceError,
)

logger = logging.getLogger(__name__)


class ErrorResponse(BaseModel):
    """The error body of every route outside `/v1`: TGI's `ErrorResponse`, what went wrong and
    its kind (validation, overloaded, ...). Declared here so every such API documents it."""

    error: str
    error_type: str


# nginx's "client closed request": nobody is left to read an answer.
CLIENT_CLOSED_REQUEST = 499


def documented_errors(body: type, described: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses of a route, each with its API's error body."""
    return {status: {"model": body, "description": text} for status, text in described.items()}


def error_headers(error: ServiceError, retry_after_s: int) -> dict[str, str] | None:
    """Headers an error status needs: when to retry a 429, how to authenticate after a 401."""
    if isinstance(error, OverloadedError):
        return {"Retry-After": str(retry_after_s)}
    if isinstance(error, AuthenticationError):
        return {"WWW-Authenticate": "Bearer"}
    return None


class ErrorShape(ABC):
    """How one wire API reports errors; `path_prefix` says which requests it answers."""

    path_prefix: str

    def __init__(self, retry_after_s: int) -> None:
        self.retry_after_s = retry_after_s

    @abstractmethod
    def service_error(self, error: ServiceError) -> Response:
        """A typed service error (404 model, 422 parameters, 429 queue full, 503, 504...)."""

    @abstractmethod
    def validation_error(self, error: RequestValidationError) -> Response:
        """The request body or query failed schema validation."""

    @abstractmethod
    def http_error(self, error: HTTPException) -> Response:
        """Routing errors (unknown URL, wrong method) and FastAPI's body parsing errors."""

    def internal_error(self, error: Exception) -> Response:
        """A bug: logged with its traceback, answered without one."""
        logger.error("unhandled error", exc_info=error)
        return self.service_error(GenerationError(f"internal error: {type(error).__name__}"))


class ErrorShapes:
    """The registered shapes; the longest matching path prefix wins, `default` otherwise."""

    def __init__(self, default: ErrorShape, others: Sequence[ErrorShape] = ()) -> None:
        self.default = default
        self.others = sorted(others, key=lambda shape: len(shape.path_prefix), reverse=True)

    def for_path(self, path: str) -> ErrorShape:
        for shape in self.others:
            if path.startswith(shape.path_prefix):
                return shape
        return self.default

    def install(self, app: FastAPI) -> None:
        """Register the app-wide handlers that dispatch every error to its path's shape."""
        app.state.error_shapes = self

        @app.exception_handler(ServiceError)
        async def service_error(request: Request, error: ServiceError) -> Response:
            return self.for_path(request.url.path).service_error(error)

        @app.exception_handler(ClientDisconnectedError)
        async def client_gone(_request: Request, _error: ClientDisconnectedError) -> Response:
            return Response(status_code=CLIENT_CLOSED_REQUEST)

        @app.exception_handler(RequestValidationError)
        async def invalid_request(request: Request, error: RequestValidationError) -> Response:
            return self.for_path(request.url.path).validation_error(error)

        @app.exception_handler(HTTPException)
        async def http_error(request: Request, error: HTTPException) -> Response:
            return self.for_path(request.url.path).http_error(error)

        @app.exception_handler(Exception)
        async def unexpected(request: Request, error: Exception) -> Response:
            return self.for_path(request.url.path).internal_error(error)
