"""ASGI middleware: what every request gets before and after its route.

`BodyGuardMiddleware` reads the body once, refusing it when larger than `max_body_bytes` (413)
or not UTF-8 (400) before any JSON parsing, in the error shape of the API the path belongs to,
and reads every body as JSON whatever its declared content type. `RequestContextMiddleware`
gives the request an id (`X-Request-Id`, echoed back), logs one access line and observes the
request metrics once the response - streamed or not - is complete.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import CLIENT_CLOSED_REQUEST, ErrorShapes
from app.logging import request_id
from app.serving.errors import BodyTooLargeError, MalformedBodyError, ServiceError
from app.serving.metrics import Metrics

logger = logging.getLogger("lamini.access")

# Polled every few seconds by orchestrators and Prometheus: logged at debug level only.
_PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})

# Scope state key under which a route records which model served the request.
MODEL_STATE_KEY = "lamini_model"


class BodyGuardMiddleware:
    """Buffer request bodies up to a size limit and check they are UTF-8."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, error_shapes: ErrorShapes) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.error_shapes = error_shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            _check_utf8(body)
        except ServiceError as error:
            response = self.error_shapes.for_path(scope["path"]).service_error(error)
            await response(scope, receive, send)
            return
        await self.app(_as_json(scope), _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        too_large = BodyTooLargeError(
            f"the request body is larger than {self.max_body_bytes} bytes (max_body_bytes)"
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _check_utf8(body: bytes) -> None:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"the request body is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        raise MalformedBodyError(message) from None


def _as_json(scope: Scope) -> Scope:
    """Every POST body here is JSON: `curl -d` (form content type) must work like the clients.

    The scope is changed in place: the router records the matched route in it, and the outer
    middleware reads that back for the metrics.
    """
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
    scope["headers"] = [*headers, (b"content-type", b"application/json")]
    return scope


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that returns the buffered body once, then waits for the disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestContextMiddleware:
    """Request id, access log line and per-route metrics for every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, default_model: Callable[[], str]) -> None:
        self.app = app
        self.metrics = metrics
        self.default_model = default_model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = CLIENT_CLOSED_REQUEST  # unless a response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            raise
        finally:
            seconds = time.perf_counter() - started
            self._observe(scope, status, seconds)
            level = logging.DEBUG if scope["path"] in _PROBE_PATHS else logging.INFO
            logger.log(
                level,
                "%s %s %d %.1fms",
                scope["method"],
                scope["path"],
                status,
                seconds * 1000,
                extra={"status": status, "duration_ms": round(seconds * 1000, 1)},
            )
            request_id.reset(token)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        """Count generation requests (POSTs to a known route) per model, route and status."""
        route = scope.get("route")
        if scope["method"] != "POST" or route is None:
            return
        model = scope.get("state", {}).get(MODEL_STATE_KEY) or self.default_model()
        self.metrics.for_model(model).observe_request(route.path, status, seconds)
