"""Bad and unsupported requests on the OpenAI routes: 4xx in OpenAI's error shape, naming the
parameter, as the official client reports them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.openai_client import FLAN, FLAN_HUB_ID, openai_client
from tests.support.server import RunningServer, running_server

USER_MESSAGE = [{"role": "user", "content": "Hello"}]
CHAT_BODY = {"model": FLAN, "messages": USER_MESSAGE, "max_tokens": 2}


@pytest.fixture(scope="module")
def server(tiny_twin: Callable[[str], Path]) -> Iterator[RunningServer]:
    tiny_twin(FLAN_HUB_ID)
    small_queue = ["--max-queue-size", "2", "--max-batch-size", "1"]
    with running_server([FLAN], args=["--max-client-batch-size", "4", *small_queue]) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> OpenAI:
    return openai_client(server)


def assert_openai_error(body: Any, param: str | None, code: str | None) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert body["error"]["code"] == code


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"best_of": 3}, "best_of"),
        ({"echo": True}, "echo"),
        ({"suffix": "and then"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": -1.0}, "frequency_penalty"),
    ],
)
def test_unsupported_completion_fields_are_refused_by_name(
    client: OpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=FLAN, prompt="Hi", max_tokens=2, **fields)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert_openai_error({"error": caught.value.body}, param, "unsupported_parameter")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"store": True}, "store"),
        (
            {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]},
            "messages[0].role",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
        ),
    ],
)
def test_unsupported_chat_fields_are_refused_by_name(
    client: OpenAI, fields: dict[str, Any], param: str
) -> None:
    arguments = {**CHAT_BODY, **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**arguments)
    assert caught.value.param == param
    assert caught.value.code == "unsupported_parameter"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"top_p": 0}, "top_p", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"stop": [""]}, "stop", "invalid_value"),
        ({"messages": []}, "messages", "invalid_value"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages", "invalid_value"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages", "invalid_value"),
        ({"messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        ({"frobnicate": 1}, "frobnicate", "unknown_parameter"),
        ({"model": None}, "model", "invalid_value"),
    ],
)
def test_invalid_chat_fields_name_the_parameter(
    server: RunningServer, fields: dict[str, Any], param: str, code: str
) -> None:
    body = {**CHAT_BODY, **fields}
    response = server.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert_openai_error(response.json(), param, code)


def test_missing_required_parameter(server: RunningServer) -> None:
    response = server.post("/v1/completions", json={"model": FLAN})
    assert response.status_code == 400
    assert_openai_error(response.json(), "prompt", "missing_required_parameter")


def test_token_id_prompts_are_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=FLAN, prompt=[[1, 2, 3]], max_tokens=2)
    assert caught.value.param == "prompt"
    assert "token-id prompts" in caught.value.message


@pytest.mark.parametrize(
    "raw_body", [b"{not json", b"[1, 2]", b'"text"', b"", b'{"model": "\\ud800"}']
)
def test_bodies_that_are_not_a_request_get_a_400(server: RunningServer, raw_body: bytes) -> None:
    response = server.post(
        "/v1/completions", content=raw_body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_lone_surrogates_in_text_are_refused(server: RunningServer) -> None:
    body = f'{{"model": "{FLAN}", "prompt": "bad \\ud800 text"}}'
    response = server.post(
        "/v1/completions", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert_openai_error(response.json(), "prompt", "invalid_value")


def test_unknown_model_is_a_404_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=USER_MESSAGE)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_too_many_choices_are_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="max_client_batch_size"):
        client.completions.create(model=FLAN, prompt=["a", "b"], n=3, max_tokens=2)


def test_max_tokens_beyond_the_model_is_refused(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.completions.create(model=FLAN, prompt="Hi", max_tokens=1_000_000)


def test_streamed_request_errors_come_before_the_stream(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=FLAN, messages=USER_MESSAGE, max_tokens=1_000_000, stream=True
        )


def test_tgi_routes_keep_their_own_error_shape(server: RunningServer) -> None:
    response = server.post("/generate", json={"inputs": "Hi", "parameters": {"best_of": 3}})
    assert response.status_code == 422
    assert set(response.json()) == {"error", "error_type"}


def test_harmless_openai_fields_are_accepted(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=FLAN,
        messages=[{"role": "developer", "content": "Be brief."}, *USER_MESSAGE],
        max_tokens=2,
        user="someone",
        metadata={"purpose": "test"},
        tool_choice="none",
        response_format={"type": "text"},
        parallel_tool_calls=False,
        presence_penalty=0,
        store=False,
        extra_body={"top_k": 5, "repetition_penalty": 1.2},
    )
    assert response.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True])
def test_a_full_queue_is_a_429_with_retry_after(server: RunningServer, stream: bool) -> None:
    body = {**CHAT_BODY, "max_tokens": 40, "stream": stream}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            requests = [http.post("/v1/chat/completions", json=body) for _ in range(12)]
            return list(await asyncio.gather(*requests))

    responses = asyncio.run(flood())
    statuses = sorted(response.status_code for response in responses)
    assert set(statuses) == {200, 429}, statuses
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.headers["retry-after"].isdigit()
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/completions"), ("POST", "/v1/embeddings")]
)
def test_other_v1_urls_are_an_openai_404(server: RunningServer, method: str, path: str) -> None:
    response = server.client().request(method, path, json={})
    assert response.status_code == 404
    assert_openai_error(response.json(), None, "unknown_url")
    assert f"{method} {path}" in response.json()["error"]["message"]


def test_explicit_nulls_mean_the_defaults(server: RunningServer) -> None:
    nulls = dict.fromkeys(
        ["n", "stream", "stop", "seed", "temperature", "top_p", "user", "stream_options"]
    )
    chat = {**CHAT_BODY, **nulls, "logprobs": None, "tools": None, "response_format": None}
    completion = {"model": FLAN, "prompt": "Hi", **nulls, "max_tokens": None, "echo": None}
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        response = server.post(path, json=body)
        assert response.status_code == 200, response.text
        assert len(response.json()["choices"]) == 1
