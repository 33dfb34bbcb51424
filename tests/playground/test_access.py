"""With API keys on, the page and its files open and everything else closed, in process."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.asgi import ServingApp, serving_app
from tests.support.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.anyio

MODEL = "scripted-gpt"
KEY = "playground-test-key"


@pytest.fixture
async def keyed() -> AsyncIterator[ServingApp]:
    async with serving_app({MODEL: ScriptedEngine()}, api_keys=[KEY]) as app:
        yield app


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/playground", 200),
        ("/playground/static/index.html", 200),
        ("/playground/static/playground.js", 200),
        ("/playground/static/absent.js", 404),
    ],
)
async def test_the_page_and_its_files_need_no_key(
    keyed: ServingApp, path: str, status: int
) -> None:
    response = await keyed.client.get(path)
    assert response.status_code == status


@pytest.mark.parametrize(
    "path",
    [
        "/families",
        "/playground/static/%2e%2e/%2e%2e/families",
        "/playground/static/..%2f..%2ffamilies",
        "/playgroundx",
        "/v1/models",
    ],
)
async def test_everything_else_still_needs_the_key(keyed: ServingApp, path: str) -> None:
    response = await keyed.client.get(path)
    assert response.status_code == 401, path
    assert "API key" in response.text


async def test_the_prompt_route_answers_with_the_key(keyed: ServingApp) -> None:
    body = {"inputs": "Name a fruit."}
    assert (await keyed.client.post("/prompt", json=body)).status_code == 401
    headers = {"Authorization": f"Bearer {KEY}"}
    response = await keyed.client.post("/prompt", json=body, headers=headers)
    assert response.status_code == 200
    assert response.json()["model_input"].endswith(
        "### Instruction:\nName a fruit.\n\n### Response:"
    )
