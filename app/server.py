"""The app factory: one FastAPI app serving every configured model.

Startup loads (or converts, through the model store) each model in a worker thread while the
server already answers `/health`; `/ready` turns 200 once all of them are loaded, so a load
balancer only sends traffic to a replica that can answer. On SIGTERM the `serve` command calls
`ServiceState.begin_drain`: readiness goes false and new generation requests get 503 while
uvicorn lets in-flight ones finish; the batchers are closed last.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.http.auth import install_access_control
from app.http.errors import ErrorShapes
from app.http.middleware import BodyGuardMiddleware, RequestContextMiddleware
from app.http.probes import router as probes_router
from app.openai.errors import OpenAIErrorShape
from app.openai.routes import router as openai_router
from app.playground import router as playground_router
from app.serving.metrics import Metrics
from app.serving.state import VERSION, ModelLoader, ServiceState
from app.settings import Settings
from app.tgi.errors import TGIErrorShape
from app.tgi.routes import router as tgi_router
from model_store.resolver import load_model


def create_app(
    settings: Settings,
    on_fatal: Callable[[], None] | None = None,
    loader: ModelLoader = load_model,
) -> FastAPI:
    """The app; `on_fatal` is called when a model cannot be loaded (the server should exit).

    `loader` turns a configured model name into a loaded model (the model store's by default).
    """
    metrics = Metrics()
    metrics.build_info.labels(
        VERSION, settings.engine, settings.device, platform.python_version()
    ).set(1)
    state = ServiceState(settings, metrics, loader)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(state.load_all(on_fatal or (lambda: None)))
        yield
        state.begin_drain()
        loading.cancel()
        await asyncio.to_thread(state.close)

    app = FastAPI(
        title="lamini-serve",
        version=VERSION,
        description="TGI-compatible text generation for LaMini-LM, OPT-IML and flan-T5 models.",
        lifespan=lifespan,
    )
    app.state.service = state
    error_shapes = ErrorShapes(
        default=TGIErrorShape(settings.retry_after_s),
        others=[OpenAIErrorShape(settings.retry_after_s)],
    )
    error_shapes.install(app)
    app.include_router(tgi_router)
    app.include_router(probes_router)
    app.include_router(openai_router)
    app.include_router(playground_router)
    app.add_middleware(
        BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes, error_shapes=error_shapes
    )
    install_access_control(app, settings, error_shapes)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, default_model=lambda: state.default_model_name
    )
    return app
