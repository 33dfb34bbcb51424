"""Errors a request can meet in the service, each knowing its HTTP status and TGI `error_type`.

They are raised wherever the problem is found (schemas, serving layer, batcher, middleware)
and become a response in exactly one place, `app/http/errors.py`, in the shape of the API the
request spoke (TGI's or OpenAI's). The `error_type` values are TGI's, so the `text-generation`
client raises its matching exception.
"""

from __future__ import annotations

from app.core.errors import LaminiError


class ServiceError(LaminiError):
    """Base class: a request that cannot be answered normally."""

    status_code: int = 500
    error_type: str = "generation"


class InvalidRequestError(ServiceError):
    """The request is malformed or asks for something the model cannot do."""

    status_code = 422
    error_type = "validation"


class MalformedBodyError(InvalidRequestError):
    """The body is not JSON or not UTF-8 at all."""

    status_code = 400


class BodyTooLargeError(InvalidRequestError):
    """The body is larger than `max_body_bytes`."""

    status_code = 413


class AuthenticationError(ServiceError):
    """No API key, or one this server does not accept; `code` says which."""

    status_code = 401
    error_type = "authentication"

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ModelNotFoundError(ServiceError):
    """The request names a model this server does not serve."""

    status_code = 404
    error_type = "not_found"


class OverloadedError(ServiceError):
    """The model's queue is full; the client should retry later."""

    status_code = 429
    error_type = "overloaded"


class UnavailableError(ServiceError):
    """The model is still loading, failed to load, or the server is shutting down."""

    status_code = 503
    error_type = "unavailable"


class RequestTimeoutError(ServiceError):
    """The request did not finish within `request_timeout_s`."""

    status_code = 504
    error_type = "timeout"


class GenerationError(ServiceError):
    """The engine failed while generating (a server-side bug or resource problem)."""

    status_code = 500
    error_type = "generation"


class StartupError(ServiceError):
    """A configured model could not be loaded, so the server cannot serve."""

    status_code = 503
    error_type = "unavailable"


class ClientDisconnectedError(Exception):
    """The client went away; its request was cancelled and nobody is left to answer."""
