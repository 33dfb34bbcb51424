"""TGI's error shape, `{"error": "...", "error_type": "..."}`: every route outside `/v1`.

The `error_type` values are TGI's (validation, overloaded, unavailable, ...), so the
`text-generation` client raises its matching exception. As in TGI, a body that is not JSON is
a 400 and parameters that fail validation a 422.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.http.errors import ErrorResponse, ErrorShape, error_headers
from app.serving.errors import ServiceError


def error_body(message: str, error_type: str) -> dict[str, Any]:
    return ErrorResponse(error=message, error_type=error_type).model_dump()


def validation_message(errors: list[Any]) -> tuple[int, str]:
    """One readable line from pydantic's errors (invalid JSON is a 400, the rest a 422)."""
    for error in errors:
        if error.get("type") == "json_invalid":
            return 400, f"the request body is not valid JSON: {error.get('ctx', {}).get('error')}"
    return 422, "; ".join(_describe(error) for error in errors)


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    if error.get("type") == "model_attributes_type" and not location:
        return "the body must be a JSON object (send Content-Type: application/json)"
    if error.get("type") == "extra_forbidden":
        return f"`{location}` is not a known parameter"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"`{location}`: {message}" if location else message


class TGIErrorShape(ErrorShape):
    """The default shape: TGI's routes, probes, and any path no other API claims."""

    path_prefix = "/"

    def service_error(self, error: ServiceError) -> JSONResponse:
        return JSONResponse(
            error_body(str(error), error.error_type),
            status_code=error.status_code,
            headers=error_headers(error, self.retry_after_s),
        )

    def validation_error(self, error: RequestValidationError) -> JSONResponse:
        status, message = validation_message(list(error.errors()))
        return JSONResponse(error_body(message, "validation"), status_code=status)

    def http_error(self, error: HTTPException) -> JSONResponse:
        error_type = "not_found" if error.status_code == 404 else "validation"
        message = str(error.detail)
        if error.status_code == 400 and error.__cause__ is not None:  # FastAPI's JSON parsing
            message = f"the request body could not be parsed as JSON: {error.__cause__}"
        return JSONResponse(error_body(message, error_type), status_code=error.status_code)
