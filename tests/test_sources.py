"""Model sources and loading: twin:, local directories and hub ids (offline) resolve to a
checkpoint and a family, or fail with one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engines.transformers_engine import TransformersEngine
from app.errors import EngineUnavailableError
from app.families import EngineKind, get_family
from app.settings import Settings
from model_store.resolver import choose_engine, load_model


def test_load_model_opens_a_twin_on_the_transformers_engine(twin_cache_dir: Path) -> None:
    settings = Settings(twin_cache_dir=twin_cache_dir, device="cpu")

    loaded = load_model("twin:MBZUAI/LaMini-Flan-T5-77M@tiny", settings)

    assert isinstance(loaded.engine, TransformersEngine)
    assert loaded.source.family.name == "lamini-flan-t5"
    assert loaded.engine.info.kind is EngineKind.TRANSFORMERS
    assert loaded.load_seconds > 0 and loaded.convert_seconds is None


def test_auto_engine_falls_back_to_transformers_for_every_family() -> None:
    for name in ("lamini-t5", "lamini-neo", "opt-iml"):
        assert choose_engine(get_family(name), "auto") is EngineKind.TRANSFORMERS


def test_engine_the_family_cannot_use_is_refused() -> None:
    with pytest.raises(EngineUnavailableError, match="ct2 engine cannot run lamini-neo"):
        choose_engine(get_family("lamini-neo"), "ct2")
