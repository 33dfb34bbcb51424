"""OpenAI's error shape for everything that goes wrong on the `/v1` routes.

OpenAI clients read `{"error": {"message", "type", "param", "code"}}` and raise the exception
matching the status (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError...). The
rest of the service answers in TGI's shape; `OpenAIErrorShape` claims every path under `/v1/`
(see `app/http/errors.py`), whether the error comes from a route, validation, the body limits
or the API-key check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.http.errors import ErrorShape, error_headers
from app.serving.errors import (
    AuthenticationError,
    ModelNotFoundError,
    OverloadedError,
    RequestTimeoutError,
    ServiceError,
    UnavailableError,
)

OPENAI_PATH_PREFIX = "/v1/"
INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


@dataclass(frozen=True)
class OpenAIError:
    """One error as OpenAI reports it: an HTTP status and the `error` object."""

    status_code: int
    message: str
    type: str = INVALID_REQUEST
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None

    def body(self) -> dict[str, dict[str, str | None]]:
        detail = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**detail, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)


def param_path(location: Sequence[int | str]) -> str | None:
    """`("body", "messages", 0, "content")` -> `messages[0].content` (OpenAI's param style)."""
    path = ""
    for part in location[1:] if location and location[0] == "body" else location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or None


def _describe(error: dict[str, Any]) -> tuple[str, str | None, str]:
    """One pydantic error as (message, param, code)."""
    kind = error["type"]
    if kind == "json_invalid":
        return f"the request body is not valid JSON: {error['msg']}", None, "invalid_body"
    param = param_path(error["loc"])
    if param is None:
        return f"the request body must be a JSON object ({error['msg']})", None, "invalid_body"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param, "unknown_parameter"
    if kind == "missing":
        return f"missing required parameter: {param}", param, "missing_required_parameter"
    code = kind if kind in ("unsupported_parameter", "invalid_value") else "invalid_value"
    return f"{param}: {error['msg']}", param, code


def from_validation_error(exc: RequestValidationError) -> OpenAIError:
    """A 400 naming the first offending parameter; the message lists every problem."""
    described = [_describe(error) for error in exc.errors()]
    message = "; ".join(text for text, _, _ in described)
    _, param, code = described[0]
    return OpenAIError(400, message, param=param, code=code)


def from_service_error(exc: ServiceError, retry_after_s: int | None = None) -> OpenAIError:
    """The service's typed errors, with OpenAI's status codes and error types.

    `retry_after_s` becomes the Retry-After header of a 429 (none inside a stream).
    """
    message = str(exc)
    headers = None if retry_after_s is None else error_headers(exc, retry_after_s)
    if isinstance(exc, ModelNotFoundError):
        return OpenAIError(404, message, param="model", code="model_not_found")
    if isinstance(exc, AuthenticationError):
        return OpenAIError(401, message, code=exc.code, headers=headers)
    if isinstance(exc, OverloadedError):
        return OpenAIError(
            429, message, "rate_limit_error", code="rate_limit_exceeded", headers=headers
        )
    if isinstance(exc, UnavailableError | RequestTimeoutError):
        return OpenAIError(exc.status_code, message, SERVER_ERROR, code=exc.error_type)
    if exc.status_code >= 500:
        return OpenAIError(exc.status_code, message, SERVER_ERROR)
    # OpenAI answers every invalid request with 400 (TGI uses 422 for some).
    status = 400 if exc.status_code == 422 else exc.status_code
    return OpenAIError(status, message, code="invalid_value")


class OpenAIErrorShape(ErrorShape):
    """Every error of a `/v1/` request, in OpenAI's shape."""

    path_prefix = OPENAI_PATH_PREFIX

    def service_error(self, error: ServiceError) -> JSONResponse:
        return from_service_error(error, self.retry_after_s).response()

    def validation_error(self, error: RequestValidationError) -> JSONResponse:
        return from_validation_error(error).response()

    def http_error(self, error: HTTPException) -> JSONResponse:
        return OpenAIError(error.status_code, str(error.detail), headers=error.headers).response()
