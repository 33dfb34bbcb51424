"""The service's state: which models are configured and loaded, and whether it is draining.

Every route asks it for the model a request names; it raises the typed errors (404 unknown
model, 503 loading or draining) that each API turns into its own error shape.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from importlib.metadata import version

from app.serving.errors import ModelNotFoundError, UnavailableError
from app.serving.metrics import Metrics
from app.serving.served_model import ServedModel
from app.settings import Settings
from model_store.resolver import LoadedModel, load_model

logger = logging.getLogger(__name__)

VERSION = version("lamini-serve")

# Loads (converting if needed) the model a name designates: the model store's, or a test's.
ModelLoader = Callable[[str, Settings], LoadedModel]


class ServiceState:
    """Which models are configured, which are loaded, and whether the server is draining."""

    def __init__(
        self, settings: Settings, metrics: Metrics, loader: ModelLoader = load_model
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.loader = loader
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
                loaded = await asyncio.to_thread(self.loader, name, self.settings)
            except Exception as exc:
                self.load_error = f"{name}: {exc}"
                logger.error("cannot load model %s: %s", name, exc)
                on_fatal()
                return
            metrics = self.metrics.for_model(name)
            metrics.set_load_seconds("load", loaded.load_seconds)
            if loaded.convert_seconds is not None:
                metrics.set_load_seconds("convert", loaded.convert_seconds)
            self.models[name] = ServedModel(name, loaded.engine, self.settings, metrics)
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
