"""TGI's routes in process (ASGI transport, scripted engine): bodies, streams, errors in TGI's
shape, the probes and /info."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.support.asgi import ServingApp, serving_app
from tests.support.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.anyio

MODEL = "scripted-gpt"


@pytest.fixture
async def served() -> AsyncIterator[ServingApp]:
    async with serving_app({MODEL: ScriptedEngine(), "second": ScriptedEngine()}) as app:
        yield app


def assert_tgi_error(response, status: int, error_type: str, mentions: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert mentions in body["error"]


async def test_generate_answers_with_details(served: ServingApp) -> None:
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 3, "details": True}}
    response = await served.client.post("/generate", json=body)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["generated_text"] == "The answer is"
    assert answer["details"]["finish_reason"] == "length"
    assert [token["text"] for token in answer["details"]["tokens"]] == [" The", " answer", " is"]


async def test_a_list_of_inputs_gets_a_list_and_the_model_query_picks_the_model(
    served: ServingApp,
) -> None:
    body = {"inputs": ["a", "b"], "parameters": {"max_new_tokens": 2}}
    response = await served.client.post("/generate?model=second", json=body)

    assert [item["generated_text"] for item in response.json()] == ["The answer"] * 2
    assert served.metric("lamini_request_total", model="second", status="200") == 1


async def test_generate_stream_sends_one_event_per_token(served: ServingApp) -> None:
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 4}}
    response = await served.client.post("/generate_stream", json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-accel-buffering"] == "no"
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line]
    assert [event["index"] for event in events] == [1, 2, 3, 4]
    assert events[-1]["generated_text"] == "The answer is forty"
    assert all(event["generated_text"] is None for event in events[:-1])


async def test_post_root_streams_only_when_asked(served: ServingApp) -> None:
    one_token = {"max_new_tokens": 1}
    plain = await served.client.post("/", json={"inputs": "hi", "parameters": one_token})
    streamed = await served.client.post(
        "/", json={"inputs": "hi", "stream": True, "parameters": one_token}
    )

    assert plain.json() == [{"generated_text": "The"}]
    assert streamed.text.startswith("data:")


@pytest.mark.parametrize(
    ("parameters", "mentions"),
    [
        ({"best_of": 2}, "best_of"),
        ({"no_such_parameter": 1}, "no_such_parameter"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": "3"}, "max_new_tokens"),
        ({"stop": [""]}, "stop"),
    ],
)
async def test_invalid_parameters_are_422_in_tgi_shape(
    served: ServingApp, parameters: dict, mentions: str
) -> None:
    response = await served.client.post(
        "/generate", json={"inputs": "hi", "parameters": parameters}
    )
    assert_tgi_error(response, 422, "validation", mentions)


async def test_neutral_values_of_unsupported_parameters_are_accepted(served: ServingApp) -> None:
    parameters = {"max_new_tokens": 1, "best_of": 1, "watermark": False, "grammar": None}
    response = await served.client.post(
        "/generate", json={"inputs": "hi", "parameters": parameters}
    )
    assert response.status_code == 200, response.text


async def test_body_errors_are_answered_before_any_route(served: ServingApp) -> None:
    not_utf8 = await served.client.post("/generate", content=b'{"inputs": "\xff"}')
    not_json = await served.client.post("/generate", content=b'{"inputs": ')
    too_large = await served.client.post("/generate", content=b"x" * 1_000_001)

    assert_tgi_error(not_utf8, 400, "validation", "UTF-8")
    assert_tgi_error(not_json, 400, "validation", "JSON")
    assert_tgi_error(too_large, 413, "validation", "max_body_bytes")


async def test_an_unknown_model_is_404_listing_the_models(served: ServingApp) -> None:
    response = await served.client.post("/generate?model=nope", json={"inputs": "hi"})
    assert_tgi_error(response, 404, "not_found", MODEL)


async def test_probes_and_info(served: ServingApp) -> None:
    assert (await served.client.get("/health")).json() == {"status": "ok"}
    assert (await served.client.get("/ready")).json()["models"] == [MODEL, "second"]
    info = (await served.client.get("/info")).json()
    assert info["model_id"] == MODEL
    assert info["model_family"] == "lamini-gpt"
    assert [model["model_id"] for model in info["models"]] == [MODEL, "second"]
    metrics = await served.client.get("/metrics")
    assert "lamini_request_total" in metrics.text


async def test_readiness_is_503_in_tgi_shape_while_draining(served: ServingApp) -> None:
    served.state.begin_drain()

    assert_tgi_error(await served.client.get("/ready"), 503, "unavailable", "shutting down")
    assert_tgi_error(
        await served.client.post("/generate", json={"inputs": "hi"}), 503, "unavailable"
    )
