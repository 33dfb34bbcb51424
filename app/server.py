"""The app factory: one FastAPI app serving every configured model.

Startup loads (or converts, through the model store) each model in a worker thread while the
server already answers `/health`; `/ready` turns 200 once all of them are loaded, so a load
balancer only sends traffic to a replica that can answer. On SIGTERM the `serve` command calls
`ServiceState.begin_drain`: readiness goes false and new generation requests get 503 while
uvicorn lets in-flight ones finish; the batchers are closed last.
"""

from __future__ import annotations

import asyncio
import logging
import platform
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from app.http.auth import install_access_control
from app.http.middleware import BodyGuardMiddleware, RequestContextMiddleware
from app.openai.routes import router as openai_router
from app.playground import router as playground_router
from app.serving.errors import ModelNotFoundError, UnavailableError
from app.serving.metrics import Metrics
from app.serving.served_model import ServedModel
from app.settings import Settings
from app.tgi.routes import install_routes
from model_store.resolver import load_model

logger = logging.getLogger(__name__)

VERSION = version("lamini-serve")


class ServiceState:
    """Which models are configured, which are loaded, and whether the server is draining."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.model_names: list[str] = list(dict.fromkeys(settings.models))
        self.models: dict[str, ServedModel] = {}
        self.load_error: str | None = None
        self.draining = False
        self.version = VERSION

    @property
    def default_model_name(self) -> str:
        return self.model_names[0]

    @property
    def ready(self) -> bool:
        loaded = all(name in self.models for name in self.model_names)
        return loaded and not self.draining and self.load_error is None

    def begin_drain(self) -> None:
        """Stop taking new work (readiness false, 503s); in-flight requests carry on."""
        if not self.draining:
            logger.info("draining: no new requests, finishing the in-flight ones")
        self.draining = True

    def model(self, name: str | None) -> ServedModel:
        """The served model called `name` (default: the first configured one)."""
        key = name or self.default_model_name
        if key not in self.model_names:
            raise ModelNotFoundError(
                f"model {key!r} is not served here; available models: "
                + ", ".join(self.model_names)
            )
        if self.draining:
            raise UnavailableError("the server is shutting down; retry on another replica")
        served = self.models.get(key)
        if served is None:
            reason = f"failed to load: {self.load_error}" if self.load_error else "still loading"
            raise UnavailableError(f"model {key!r} is {reason}; check /ready")
        return served

    async def load_all(self, on_fatal: Callable[[], None]) -> None:
        """Load every configured model in turn, off the event loop."""
        for name in self.model_names:
            logger.info("loading model %s (engine=%s)", name, self.settings.engine)
            try:
                loaded = await asyncio.to_thread(load_model, name, self.settings)
            except Exception as exc:
                self.load_error = f"{name}: {exc}"
                logger.error("cannot load model %s: %s", name, exc)
                on_fatal()
                return
            metrics = self.metrics.for_model(name)
            metrics.set_load_seconds("load", loaded.load_seconds)
            if loaded.convert_seconds is not None:
                metrics.set_load_seconds("convert", loaded.convert_seconds)
            self.models[name] = ServedModel(loaded, self.settings, metrics)
            info = loaded.engine.info
            logger.info(
                "model %s ready in %.1fs: family=%s engine=%s quantization=%s device=%s",
                name,
                loaded.load_seconds,
                loaded.source.family.name,
                info.kind.value,
                info.quantization,
                info.device,
            )

    def close(self) -> None:
        for served in self.models.values():
            served.close()


def create_app(settings: Settings, on_fatal: Callable[[], None] | None = None) -> FastAPI:
    """The app; `on_fatal` is called when a model cannot be loaded (the server should exit)."""
    metrics = Metrics()
    metrics.build_info.labels(
        VERSION, settings.engine, settings.device, platform.python_version()
    ).set(1)
    state = ServiceState(settings, metrics)

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
    install_routes(app)
    app.include_router(openai_router)
    app.include_router(playground_router)
    app.add_middleware(BodyGuardMiddleware, max_body_bytes=settings.max_body_bytes)
    install_access_control(app, settings)
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, default_model=lambda: state.default_model_name
    )
    return app
