"""`LAMINI_CONVERT=never`: replicas that share a read-only store (deploy/kubernetes) open the
entries a convert Job published and never convert, lock or write; a missing entry is a startup
error that says which command fills the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.engine_kinds import EngineKind
from app.core.errors import StoreEntryError
from app.settings import Settings
from model_store.resolver import ensure_converted, load_model
from model_store.sources import resolve_source
from tests.support.kubernetes import read_only_view
from tests.support.server import running_server

HUB_ID = "MBZUAI/LaMini-Flan-T5-77M"
MODEL = f"twin:{HUB_ID}@tiny"


def settings_for(store_dir: Path, **fields: str) -> Settings:
    return Settings(
        models=[MODEL], engine="ct2", quantization="int8", store_dir=store_dir, **fields
    )


@pytest.fixture(scope="module")
def filled_store(tiny_twin, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store the way the convert Job leaves it: the model's entry published."""
    tiny_twin(HUB_ID)
    store_dir = tmp_path_factory.mktemp("filled-store")
    settings = settings_for(store_dir)
    source = resolve_source(MODEL, twin_cache_dir=settings.twin_cache_dir)
    ensure_converted(source, EngineKind.CTRANSLATE2, settings)
    return store_dir


def test_an_entry_is_opened_from_a_read_only_store(filled_store: Path, tmp_path: Path) -> None:
    with read_only_view(filled_store, tmp_path / "read-only") as view:
        loaded = load_model(MODEL, settings_for(view, convert="never"))
    assert loaded.engine.info.kind is EngineKind.CTRANSLATE2
    assert loaded.engine.info.quantization == "int8"
    assert loaded.convert_seconds is None


def test_converting_lazily_cannot_work_on_a_read_only_store(
    filled_store: Path, tmp_path: Path
) -> None:
    """Why replicas need the setting: the default path locks the entry, which writes."""
    with (
        read_only_view(filled_store, tmp_path / "read-only") as view,
        pytest.raises(StoreEntryError, match="cannot write to the model store"),
    ):
        load_model(MODEL, settings_for(view))


def test_a_missing_entry_is_an_error_naming_the_convert_command(tmp_path: Path) -> None:
    store_dir = tmp_path / "empty-store"
    with pytest.raises(StoreEntryError) as raised:
        load_model(MODEL, settings_for(store_dir, convert="never"))
    message = str(raised.value)
    assert "no store entry" in message
    assert f"lamini-serve convert {MODEL}" in message
    assert "LAMINI_CONVERT=never" in message
    assert not store_dir.exists(), "nothing may be written to the store"


def test_the_server_exits_at_startup_when_the_entry_is_missing(tiny_twin, tmp_path: Path) -> None:
    tiny_twin(HUB_ID)
    env = {
        "LAMINI_ENGINE": "ct2",
        "LAMINI_QUANTIZATION": "int8",
        "LAMINI_CONVERT": "never",
        "LAMINI_STORE_DIR": str(tmp_path / "empty-store"),
    }
    with running_server([MODEL], env=env, wait_ready=False) as server:
        returncode = server.process.wait(timeout=60)
        log = server.log()
    assert returncode != 0
    assert "no store entry" in log
    assert f"lamini-serve convert {MODEL}" in log
