"""Readiness and model lookup: ready only when every configured model is loaded and the server
is not draining; a model that fails to load is reported and stops the server."""

from __future__ import annotations

import asyncio

import pytest

from app.serving.errors import ModelNotFoundError, UnavailableError
from app.serving.metrics import Metrics
from app.serving.state import ServiceState
from app.settings import Settings

T5 = "twin:MBZUAI/LaMini-Flan-T5-77M@tiny"
GPT = "twin:MBZUAI/LaMini-GPT-124M@tiny"


def new_state(*models: str) -> ServiceState:
    return ServiceState(Settings(models=list(models), engine="transformers"), Metrics())


def test_not_ready_until_every_model_is_loaded_and_not_while_draining() -> None:
    state = new_state(T5, GPT)
    assert not state.ready
    with pytest.raises(UnavailableError, match="still loading"):
        state.model(None)
    with pytest.raises(ModelNotFoundError, match=f"{T5}, {GPT}"):
        state.model("other")

    fatal: list[bool] = []
    asyncio.run(state.load_all(lambda: fatal.append(True)))
    try:
        assert state.ready
        assert not fatal
        assert state.model(None).name == T5
        assert state.model(GPT).family.name == "lamini-gpt"

        state.begin_drain()
        assert not state.ready
        with pytest.raises(UnavailableError, match="shutting down"):
            state.model(None)
    finally:
        state.close()


def test_a_model_that_fails_to_load_is_reported_and_fatal() -> None:
    state = new_state("twin:MBZUAI/No-Such-Model")
    fatal: list[bool] = []
    asyncio.run(state.load_all(lambda: fatal.append(True)))
    assert fatal == [True]
    assert not state.ready
    assert "No-Such-Model" in (state.load_error or "")
    with pytest.raises(UnavailableError, match="failed to load"):
        state.model(None)
