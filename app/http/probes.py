"""What orchestrators and Prometheus poll: liveness, readiness and the metrics text.

Liveness answers as long as the process does. Readiness is 200 only when every configured
model is loaded and the server is not draining, so a load balancer sends traffic only where
it can be answered; its 503 says why not, in the default error shape.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.http.requests import service_state
from app.serving.errors import UnavailableError
from app.serving.metrics import CONTENT_TYPE

router = APIRouter(tags=["Probes"])


@router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "Still loading, a model failed to load, or draining"}},
    summary="Readiness: 200 only when every configured model is loaded",
)
async def ready(request: Request) -> Response:
    state = service_state(request)
    if state.ready:
        return JSONResponse({"status": "ready", "models": state.model_names})
    if state.draining:
        reason = "the server is shutting down"
    elif state.load_error:
        reason = f"a model failed to load: {state.load_error}"
    else:
        missing = [name for name in state.model_names if name not in state.models]
        reason = f"still loading: {', '.join(missing)}"
    shape = request.app.state.error_shapes.for_path(request.url.path)
    return shape.service_error(UnavailableError(reason))


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(service_state(request).metrics.exposition(), media_type=CONTENT_TYPE)
