"""The real app factory in this process, serving scripted engines, with an httpx client over
the ASGI transport: the whole HTTP stack (middleware, error shapes, routes, serving layer,
batcher) without a subprocess, a port or a model.

    async with serving_app({"tiny-gpt": ScriptedEngine()}) as app:
        response = await app.client.post("/generate", json={"inputs": "hi"})
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.engines.base import Engine
from app.server import create_app
from app.serving.state import ServiceState
from app.settings import Settings
from model_store.resolver import LoadedModel
from model_store.sources import ModelSource


@dataclass
class ServingApp:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def state(self) -> ServiceState:
        return self.app.state.service

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.state.metrics.registry, name, **labels)


def metric_sum(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and wanted <= set(sample.labels.items())
    )


def _loader(engines: Mapping[str, Engine]):
    def load(name: str, _settings: Settings) -> LoadedModel:
        engine = engines[name]
        source = ModelSource(name, Path("/nonexistent"), engine.family, revision=None)
        return LoadedModel(name=name, source=source, engine=engine, load_seconds=0.0)

    return load


@asynccontextmanager
async def serving_app(engines: Mapping[str, Engine], **settings: Any) -> AsyncIterator[ServingApp]:
    """The app serving `engines` (the first is the default), ready, with `settings` applied."""
    config = Settings(models=list(engines), **settings)
    app = create_app(config, loader=_loader(engines))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://in-process") as client,
    ):
        while not app.state.service.ready:
            await asyncio.sleep(0.01)
        yield ServingApp(app, client)
