"""Convert a model source for an engine and publish the result in the model store.

The one function the CLI and the model resolver call: it decides the store key (source and
revision, or a content hash for a local directory), checks that the engine can run the family
and that the quantisation exists for it, and lets `ModelStore.ensure` do the locking, building
and publishing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from app.core.engine_kinds import EngineKind
from app.core.errors import EngineUnavailableError
from app.core.families import canonical_hub_id
from conversion.ctranslate2 import CT2_QUANTIZATIONS, convert_to_ctranslate2
from conversion.onnx import ONNX_QUANTIZATIONS, convert_to_onnx
from model_store.sources import TWIN_PREFIX, ModelSource, parse_twin
from model_store.store import BuildOutcome, EntryKey, ModelStore, sha256_file

QUANTIZATIONS: dict[EngineKind, tuple[str, ...]] = {
    EngineKind.CTRANSLATE2: CT2_QUANTIZATIONS,
    EngineKind.ONNX: ONNX_QUANTIZATIONS,
}

_CONVERTERS: dict[EngineKind, Callable[[ModelSource, Path, str], None]] = {
    EngineKind.CTRANSLATE2: lambda source, out, q: convert_to_ctranslate2(
        source.checkpoint_dir, out, q
    ),
    EngineKind.ONNX: lambda source, out, q: convert_to_onnx(
        source.checkpoint_dir, out, source.family, q
    ),
}


def default_quantization(engine: EngineKind, device: str) -> str:
    """int8 for CTranslate2 on CPU, float16 on CUDA; float32 for the other engines."""
    if engine is EngineKind.CTRANSLATE2:
        return "float16" if device == "cuda" else "int8"
    return "float32"


def checkpoint_fingerprint(checkpoint_dir: Path) -> str:
    """A content hash of a local checkpoint: an edited checkpoint gets a new store entry."""
    digest = hashlib.sha256()
    for file in sorted(p for p in checkpoint_dir.rglob("*") if p.is_file()):
        digest.update(file.relative_to(checkpoint_dir).as_posix().encode("utf-8"))
        digest.update(sha256_file(file).encode("ascii"))
    return "sha256-" + digest.hexdigest()[:16]


def _canonical_name(name: str) -> str:
    """One spelling per model, so `mbzuai/lamini-gpt-124m` and `MBZUAI/LaMini-GPT-124M` (or the
    same twin named either way) share their store entries."""
    twin = parse_twin(name)
    if twin is not None:
        return f"{TWIN_PREFIX}{twin.hub_id}@{twin.size.value}"
    return canonical_hub_id(name) or name


def entry_key(source: ModelSource, engine: EngineKind, quantization: str) -> EntryKey:
    """Hub models and twins are keyed by their id and revision, directories by path and content."""
    if source.revision is not None:
        return EntryKey(_canonical_name(source.name), source.revision, engine, quantization)
    return EntryKey(
        str(source.checkpoint_dir),
        checkpoint_fingerprint(source.checkpoint_dir),
        engine,
        quantization,
    )


def check_conversion(source: ModelSource, engine: EngineKind, quantization: str) -> None:
    """Raise a clear error before any work when `engine`/`quantization` cannot work for `source`."""
    if engine not in QUANTIZATIONS:
        raise EngineUnavailableError(
            f"{engine.value} runs checkpoints directly; only "
            f"{', '.join(kind.value for kind in QUANTIZATIONS)} models are converted"
        )
    if engine not in source.family.engines:
        raise EngineUnavailableError(
            f"the {engine.value} engine cannot run {source.family.name} models; use one of: "
            f"{', '.join(kind.value for kind in source.family.engines)}"
        )
    if quantization not in QUANTIZATIONS[engine]:
        raise EngineUnavailableError(
            f"quantization {quantization!r} is not available for {engine.value}; use one of: "
            f"{', '.join(QUANTIZATIONS[engine])}"
        )


def convert_into_store(
    source: ModelSource,
    engine: EngineKind,
    quantization: str,
    store: ModelStore,
    *,
    force: bool = False,
) -> BuildOutcome:
    """The store entry of `source` for `engine`, converting (once, under a lock) if needed."""
    check_conversion(source, engine, quantization)
    convert = _CONVERTERS[engine]
    return store.ensure(
        entry_key(source, engine, quantization),
        source.family.name,
        lambda out_dir: convert(source, out_dir, quantization),
        force=force,
    )
