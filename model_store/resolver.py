"""From a model name to a loaded engine: resolve the source, pick the engine, open it.

This is the one place that turns configuration into a running model, so the CLI commands and
the server load models the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from app.engines.base import Engine
from app.errors import EngineUnavailableError
from app.families import EngineKind, Family
from app.settings import Settings
from model_store.sources import ModelSource, resolve_source


@dataclass
class LoadedModel:
    """A model ready to generate, with where it came from and what loading it cost."""

    name: str
    source: ModelSource
    engine: Engine
    load_seconds: float
    convert_seconds: float | None = None


def resolve_device(setting: str) -> str:
    """`auto` means CUDA when torch sees a GPU, else CPU."""
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_engine(family: Family, setting: str) -> EngineKind:
    """The engine to run `family` on: the one asked for, or for `auto` the best one available.

    Only the transformers engine exists so far, so `auto` means transformers for every family.
    """
    if setting == "auto":
        return EngineKind.TRANSFORMERS
    kind = EngineKind(setting)
    if kind not in family.engines:
        raise EngineUnavailableError(
            f"the {kind.value} engine cannot run {family.name} models; "
            f"use one of: {', '.join(engine.value for engine in family.engines)}"
        )
    return kind


def open_engine(
    kind: EngineKind, checkpoint_dir: Path, family: Family, settings: Settings
) -> Engine:
    """Open `checkpoint_dir` on the engine `kind`."""
    if kind is EngineKind.TRANSFORMERS:
        from app.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            checkpoint_dir,
            family,
            device=resolve_device(settings.device),
            threads=settings.intra_threads,
        )
    raise EngineUnavailableError(
        f"the {kind.value} engine is not available yet; use --backend transformers"
    )


def load_model(name: str, settings: Settings) -> LoadedModel:
    """Resolve `name` (hub id, directory or twin:) and open it on the configured engine."""
    started = time.perf_counter()
    source = resolve_source(name, twin_cache_dir=settings.twin_cache_dir, family=settings.family)
    kind = choose_engine(source.family, settings.engine)
    engine = open_engine(kind, source.checkpoint_dir, source.family, settings)
    return LoadedModel(
        name=name,
        source=source,
        engine=engine,
        load_seconds=time.perf_counter() - started,
    )
