"""From a model name to a loaded engine: resolve the source, pick the engine, open it.

This is the one place that turns configuration into a running model, so the CLI commands and
the server load models the same way.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from app.core.engine_kinds import EngineKind
from app.core.errors import EngineUnavailableError, StoreEntryError
from app.core.families import Family
from app.engines.base import Engine
from app.settings import Settings
from model_store.sources import ModelSource, resolve_source
from model_store.store import BuildOutcome, ModelStore, read_manifest

logger = logging.getLogger(__name__)


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


def choose_engine(
    family: Family, setting: str, device: str = "auto", quantization: str | None = None
) -> EngineKind:
    """The engine to run `family` on `device` (a device setting) in `quantization` (None: the
    engine's default): the one asked for, or (auto) `default_engine`."""
    if setting == "auto":
        return default_engine(family, device, quantization)
    kind = EngineKind(setting)
    if kind not in family.engines:
        raise EngineUnavailableError(
            f"the {kind.value} engine cannot run {family.name} models; "
            f"use one of: {', '.join(engine.value for engine in family.engines)}"
        )
    return kind


def default_engine(family: Family, device: str, quantization: str | None = None) -> EngineKind:
    """What `auto` runs: on the CPU the continuous engine for the families measured ahead with
    it (`Family.continuous_on_cpu`: it starts a request within a step where window batching
    makes it wait for a whole batch), where its runtime is installed (torch and numba, the
    convert extra; the slim runtime image has neither) and it computes in `quantization`; else
    the family's converted engine (a quantization only it has, such as CTranslate2's
    int8_float32, keeps it)."""
    runnable = family.continuous_on_cpu and continuous_runtime_installed()
    # (resolving the device "auto" imports torch, so only where it is installed)
    if runnable and resolve_device(device) == "cpu" and _continuous_computes(quantization):
        return EngineKind.CONTINUOUS
    return family.preferred_engine


def _continuous_computes(quantization: str | None) -> bool:
    from app.engines.stepwise.precision import PRECISIONS

    return quantization is None or quantization in PRECISIONS


def continuous_runtime_installed() -> bool:
    """Whether the continuous engine's libraries can be imported here."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "numba"))


def _converted_engine_class(kind: EngineKind) -> type:
    """The engine class for store entries of `kind` (imported on demand: each pulls in its
    runtime, and a slim image may lack the ONNX one)."""
    if kind is EngineKind.CTRANSLATE2:
        from app.engines.ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine
    from app.engines.onnx_engine import OnnxEngine

    return OnnxEngine


def open_engine(
    kind: EngineKind, checkpoint_dir: Path, family: Family, settings: Settings
) -> Engine:
    """Open `checkpoint_dir` on the engine `kind`.

    For CTranslate2 and ONNX, `checkpoint_dir` is a model store entry (see `load_model`); its
    manifest says the quantization.
    """
    if kind in (EngineKind.CTRANSLATE2, EngineKind.ONNX):
        return _converted_engine_class(kind)(
            checkpoint_dir,
            family,
            read_manifest(checkpoint_dir).quantization,
            device=settings.device,
            intra_threads=settings.intra_threads,
            inter_threads=settings.inter_threads,
        )
    device, threads = resolve_device(settings.device), settings.intra_threads
    if kind is EngineKind.TRANSFORMERS:
        from app.engines.transformers_engine import TransformersEngine

        return TransformersEngine(checkpoint_dir, family, device=device, threads=threads)
    if kind is EngineKind.CONTINUOUS:  # float32 or bfloat16, from the quantization setting
        from app.engines.stepwise.engine import ContinuousEngine

        return ContinuousEngine(
            checkpoint_dir,
            family,
            device,
            threads,
            precision=settings.quantization,
            prefix_cache_mb=settings.prefix_cache_mb,
        )
    raise EngineUnavailableError(f"unknown engine {kind.value!r}")


def engine_device(kind: EngineKind, setting: str) -> str:
    """The device `kind` will run on for the device setting (each runtime detects CUDA itself)."""
    if kind is EngineKind.CTRANSLATE2:
        from app.engines.ctranslate2_engine import resolve_ct2_device

        return resolve_ct2_device(setting)
    if kind is EngineKind.ONNX:
        from app.engines.onnx_engine import resolve_onnx_provider

        return "cpu" if resolve_onnx_provider(setting) == "CPUExecutionProvider" else "cuda"
    return resolve_device(setting)


def quantization_for(kind: EngineKind, settings: Settings) -> str:
    """The configured quantization, else int8 for CTranslate2 on CPU, float16 on CUDA and
    float32 for the other engines."""
    from conversion.publish import default_quantization

    return settings.quantization or default_quantization(kind, engine_device(kind, settings.device))


def ensure_converted(
    source: ModelSource, kind: EngineKind, settings: Settings, *, force: bool = False
) -> BuildOutcome:
    """The store entry of `source` for `kind`, converting it on first use."""
    from conversion.publish import convert_into_store

    store = ModelStore(settings.store_dir)
    outcome = convert_into_store(source, kind, quantization_for(kind, settings), store, force=force)
    if outcome.replaced_problem:
        logger.warning("rebuilt a broken model store entry: %s", outcome.replaced_problem)
    return outcome


def open_converted(source: ModelSource, kind: EngineKind, settings: Settings) -> BuildOutcome:
    """The store entry of `source` for `kind` when it exists; never converts, locks or writes,
    so it works on a read-only store (`LAMINI_CONVERT=never`)."""
    from conversion.publish import entry_key

    key = entry_key(source, kind, quantization_for(kind, settings))
    try:
        return BuildOutcome(ModelStore(settings.store_dir).open(key), built=False)
    except StoreEntryError as exc:
        raise StoreEntryError(
            f"{exc}; this server does not convert (LAMINI_CONVERT=never): run "
            f"`lamini-serve convert {source.name}` with the same LAMINI_ENGINE and "
            f"LAMINI_QUANTIZATION into {settings.store_dir} first (the convert Job)"
        ) from None


def load_model(name: str, settings: Settings) -> LoadedModel:
    """Resolve `name` (hub id, directory or twin:) and open it on the configured engine."""
    started = time.perf_counter()
    source = resolve_source(name, twin_cache_dir=settings.twin_cache_dir, family=settings.family)
    kind = choose_engine(source.family, settings.engine, settings.device, settings.quantization)
    model_dir, convert_seconds = source.checkpoint_dir, None
    if kind is EngineKind.TRANSFORMERS:
        if settings.quantization not in (None, "float32"):
            raise EngineUnavailableError(
                f"the transformers engine runs float32 only, not {settings.quantization}; "
                "use --backend ct2 or onnx for quantized models"
            )
    elif kind is not EngineKind.CONTINUOUS:  # that one runs the checkpoint as it is
        if settings.convert == "never":
            outcome = open_converted(source, kind, settings)
        else:
            outcome = ensure_converted(source, kind, settings)
        model_dir = outcome.entry.path
        convert_seconds = outcome.entry.manifest.conversion_seconds if outcome.built else None
    engine = open_engine(kind, model_dir, source.family, settings)
    return LoadedModel(
        name=name,
        source=source,
        engine=engine,
        load_seconds=time.perf_counter() - started,
        convert_seconds=convert_seconds,
    )
