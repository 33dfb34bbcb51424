"""Shared fixtures: tiny twins built once per test session, and the environment every
subprocess (CLI, server) of the suite runs with."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model_store.sources import TwinSpec, ensure_twin
from model_store.twins import TwinSize

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def twin_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twin cache shared by the whole session (and by subprocesses through the env)."""
    return tmp_path_factory.mktemp("twins")


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model store shared by the whole session, so each conversion happens once."""
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def tiny_twin(twin_cache_dir: Path) -> Callable[[str], Path]:
    """`tiny_twin(hub_id)` -> checkpoint dir of its tiny twin, built once per session."""

    def build(hub_id: str) -> Path:
        return ensure_twin(TwinSpec(hub_id, TwinSize.TINY), twin_cache_dir)

    return build


@pytest.fixture(scope="session", autouse=True)
def lamini_environment(twin_cache_dir: Path, store_dir: Path) -> Iterator[None]:
    """Point every lamini-serve process of the session at the session's caches, offline."""
    saved = dict(os.environ)
    os.environ["LAMINI_TWIN_CACHE_DIR"] = str(twin_cache_dir)
    os.environ["LAMINI_STORE_DIR"] = str(store_dir)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def anyio_backend() -> str:
    """In-process async tests run on asyncio, the loop uvicorn serves on."""
    return "asyncio"
