"""What every API's routes do with a request besides parsing it.

Find the served model the request names (recording it for the per-route metrics), notice a
client that went away, and answer with a stream of server-sent events that proxies pass on
token by token.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from app.http.middleware import MODEL_STATE_KEY
from app.serving.served_model import ServedModel
from app.serving.state import ServiceState

# `X-Accel-Buffering: no` keeps nginx from buffering the stream.
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def service_state(request: Request) -> ServiceState:
    return request.app.state.service


def served_model(request: Request, name: str | None) -> ServedModel:
    """The model `name` (None: the default one), recorded for the request's metrics."""
    served = service_state(request).model(name)
    request.scope.setdefault("state", {})[MODEL_STATE_KEY] = served.name
    return served


async def client_gone(request: Request) -> None:
    """Resolves when the client disconnects (the body has been read, so only that can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def event_stream(events: AsyncIterator[str] | AsyncIterator[bytes]) -> StreamingResponse:
    """Server-sent events, each sent as soon as it is produced."""
    return StreamingResponse(events, media_type="text/event-stream", headers=_SSE_HEADERS)
