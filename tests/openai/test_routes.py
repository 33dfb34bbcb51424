"""OpenAI's routes in process (ASGI transport, scripted engine): choices, chat, streams ending in
`[DONE]`, and every error - from validation, the body limits and the API-key check alike - in
OpenAI's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.support.asgi import ServingApp, serving_app
from tests.support.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.anyio

MODEL = "scripted-gpt"
KEY = "sk-test-key"


@pytest.fixture
async def served() -> AsyncIterator[ServingApp]:
    async with serving_app({MODEL: ScriptedEngine()}) as app:
        yield app


def assert_openai_error(response, status: int, code: str | None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] == param


def data_lines(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line]


async def test_completions_fan_out_n_choices_per_prompt(served: ServingApp) -> None:
    body = {"model": MODEL, "prompt": ["a", "b"], "n": 2, "max_tokens": 2, "temperature": 0}
    response = await served.client.post("/v1/completions", json=body)

    completion = response.json()
    assert [choice["index"] for choice in completion["choices"]] == [0, 1, 2, 3]
    assert {choice["text"] for choice in completion["choices"]} == {"The answer"}
    assert completion["usage"]["completion_tokens"] == 8
    assert completion["id"].startswith("cmpl-")


async def test_chat_answers_the_last_user_message(served: ServingApp) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        "max_tokens": 3,
    }
    response = await served.client.post("/v1/chat/completions", json=body)

    choice = response.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "The answer is", "refusal": None}
    assert choice["finish_reason"] == "length"


async def test_a_stream_ends_with_usage_and_done(served: ServingApp) -> None:
    body = {
        "model": MODEL,
        "prompt": "hi",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await served.client.post("/v1/completions", json=body)

    lines = data_lines(response.text)
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "The answer is"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_unknown_and_unsupported_parameters_are_400_naming_them(served: ServingApp) -> None:
    unknown = await served.client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "nope": 1}
    )
    unsupported = await served.client.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "best_of": 3}
    )

    assert_openai_error(unknown, 400, "unknown_parameter", "nope")
    assert_openai_error(unsupported, 400, "unsupported_parameter", "best_of")


async def test_an_unknown_model_is_404_model_not_found(served: ServingApp) -> None:
    response = await served.client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"})
    assert_openai_error(response, 404, "model_not_found", "model")


async def test_body_limits_answer_in_openai_shape_under_v1(served: ServingApp) -> None:
    not_utf8 = await served.client.post("/v1/completions", content=b'{"prompt": "\xff"}')
    too_large = await served.client.post("/v1/completions", content=b"x" * 1_000_001)

    assert_openai_error(not_utf8, 400, "invalid_value")
    assert_openai_error(too_large, 413, "invalid_value")


async def test_an_unknown_v1_url_is_openai_404(served: ServingApp) -> None:
    response = await served.client.get("/v1/engines")
    assert_openai_error(response, 404, "unknown_url")


async def test_models_are_listed_and_retrieved(served: ServingApp) -> None:
    listed = (await served.client.get("/v1/models")).json()
    assert [card["id"] for card in listed["data"]] == [MODEL]
    assert (await served.client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
    assert_openai_error(await served.client.get("/v1/models/nope"), 404, "model_not_found", "model")


async def test_a_missing_key_is_401_in_the_shape_of_each_api() -> None:
    async with serving_app({MODEL: ScriptedEngine()}, api_keys=[KEY]) as served:
        openai = await served.client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
        tgi = await served.client.post("/generate", json={"inputs": "x"})
        keyed = await served.client.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "x", "max_tokens": 1},
            headers={"Authorization": f"Bearer {KEY}"},
        )

    assert_openai_error(openai, 401, "missing_api_key")
    assert openai.headers["www-authenticate"] == "Bearer"
    assert tgi.status_code == 401
    assert tgi.json()["error_type"] == "authentication"
    assert keyed.status_code == 200, keyed.text
