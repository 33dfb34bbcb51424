"""Every endpoint of the TGI-compatible API against a real server serving two tiny twins."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.server import HISTOGRAMS, RunningServer, running_server

T5 = "twin:MBZUAI/LaMini-Flan-T5-77M@tiny"
GPT = "twin:MBZUAI/LaMini-GPT-124M@tiny"


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server([T5, GPT], env={"LAMINI_LOG_FORMAT": "json"}) as running:
        yield running


def sse_events(body: str) -> list[dict]:
    """The JSON payloads of a `data:{json}\\n\\n` event stream (TGI framing)."""
    assert body.endswith("\n\n")
    events = [chunk for chunk in body.split("\n\n") if chunk]
    assert all(chunk.startswith("data:") for chunk in events)
    return [json.loads(chunk.removeprefix("data:")) for chunk in events]


def generate(server: RunningServer, inputs: object, path: str = "/generate", **params: object):
    response = server.post(path, json={"inputs": inputs, "parameters": params})
    assert response.status_code == 200, response.text
    return response.json()


def test_health_ready_and_info(server: RunningServer) -> None:
    assert server.get("/health").json() == {"status": "ok"}
    ready = server.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["models"] == [T5, GPT]

    info = server.get("/info").json()
    assert info["model_id"] == T5
    assert info["model_family"] == "lamini-flan-t5"
    assert info["engine"] == "transformers"
    assert info["quantization"] == "float32"
    assert info["max_input_tokens"] > 0
    assert info["max_total_tokens"] > info["max_input_tokens"]
    assert info["version"]
    assert [m["model_id"] for m in info["models"]] == [T5, GPT]
    assert server.get("/info", params={"model": GPT}).json()["model_family"] == "lamini-gpt"


def test_generate_returns_text_and_details_on_request(server: RunningServer) -> None:
    plain = generate(server, "Name a colour.", max_new_tokens=5)
    assert set(plain) == {"generated_text"}
    assert isinstance(plain["generated_text"], str)

    detailed = generate(server, "Name a colour.", max_new_tokens=5, details=True)
    details = detailed["details"]
    assert detailed["generated_text"] == plain["generated_text"]
    assert details["finish_reason"] in {"length", "eos_token"}
    assert details["generated_tokens"] == len(details["tokens"]) <= 5
    assert details["seed"] is None  # greedy
    assert details["prefill"] == []
    token = details["tokens"][0]
    assert set(token) == {"id", "text", "logprob", "special"}
    assert token["logprob"] <= 0


def test_generate_accepts_a_list_of_inputs(server: RunningServer) -> None:
    prompts = ["Name a colour.", "Say hi.", "Count to three."]
    batch = generate(server, prompts, max_new_tokens=4)
    singles = [generate(server, p, max_new_tokens=4) for p in prompts]
    assert batch == singles


def test_generate_stream_sends_one_event_per_token_and_the_text_last(
    server: RunningServer,
) -> None:
    response = server.post(
        "/generate_stream",
        json={"inputs": "Name a colour.", "parameters": {"max_new_tokens": 6, "details": True}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    expected = generate(server, "Name a colour.", max_new_tokens=6, details=True)

    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == expected["generated_text"]
    assert last["details"]["generated_tokens"] == len(events)
    assert last["details"]["finish_reason"] == expected["details"]["finish_reason"]
    assert last["details"]["input_length"] > 0
    assert [e["token"] for e in events] == expected["details"]["tokens"]


def test_compat_route_follows_the_stream_flag(server: RunningServer) -> None:
    expected = generate(server, "Say hi.", max_new_tokens=4)
    listed = server.post("/", json={"inputs": "Say hi.", "parameters": {"max_new_tokens": 4}})
    assert listed.json() == [expected]

    streamed = server.post(
        "/", json={"inputs": "Say hi.", "parameters": {"max_new_tokens": 4}, "stream": True}
    )
    assert sse_events(streamed.text)[-1]["generated_text"] == expected["generated_text"]


def test_model_is_chosen_by_query_or_body_and_unknown_is_404(server: RunningServer) -> None:
    by_body = server.post(
        "/generate", json={"inputs": "Hi", "model": GPT, "parameters": {"max_new_tokens": 3}}
    )
    by_query = server.post(
        "/generate",
        params={"model": GPT},
        json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}},
    )
    default = server.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}})
    assert by_body.json() == by_query.json()
    assert by_body.json() != default.json()

    unknown = server.post("/generate", json={"inputs": "Hi", "model": "nope"})
    assert unknown.status_code == 404
    assert unknown.json()["error_type"] == "not_found"
    assert T5 in unknown.json()["error"]
    assert GPT in unknown.json()["error"]


def test_prompt_format_is_applied_unless_raw_prompt(server: RunningServer) -> None:
    from app.core.prompts import ALPACA

    instruction = "Name a colour."
    formatted = generate(server, instruction, max_new_tokens=4, path=f"/generate?model={GPT}")
    raw_formatted = generate(
        server, ALPACA.wrap(instruction), max_new_tokens=4, raw_prompt=True,
        path=f"/generate?model={GPT}",
    )  # fmt: skip
    raw_plain = generate(
        server, instruction, max_new_tokens=4, raw_prompt=True, path=f"/generate?model={GPT}"
    )
    assert formatted == raw_formatted
    assert formatted != raw_plain


def test_return_full_text_prepends_the_prompt_as_sent(server: RunningServer) -> None:
    text = generate(server, "Say hi.", max_new_tokens=4)["generated_text"]
    full = generate(server, "Say hi.", max_new_tokens=4, return_full_text=True)
    assert full["generated_text"] == "Say hi." + text


def test_stop_sequence_ends_generation_and_is_kept(server: RunningServer) -> None:
    tokens = generate(server, "Name a colour.", max_new_tokens=8, details=True)["details"]["tokens"]
    stop = tokens[2]["text"].strip() or tokens[1]["text"].strip()
    stopped = generate(server, "Name a colour.", max_new_tokens=8, stop=[stop], details=True)
    assert stopped["details"]["finish_reason"] == "stop_sequence"
    assert stopped["generated_text"].endswith(stop)


def test_sampling_with_a_seed_is_reproducible_and_reports_the_seed(server: RunningServer) -> None:
    params = {
        "max_new_tokens": 6,
        "do_sample": True,
        "temperature": 1.5,
        "seed": 7,
        "details": True,
    }
    first = generate(server, "Write a word.", **params)
    second = generate(server, "Write a word.", **params)
    assert first == second
    assert first["details"]["seed"] == 7


def test_request_id_is_echoed_and_tags_the_json_log_lines(server: RunningServer) -> None:
    response = server.post(
        "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
        headers={"X-Request-Id": "abc-123"},
    )  # fmt: skip
    assert response.headers["x-request-id"] == "abc-123"
    assert server.get("/health").headers["x-request-id"]

    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    tagged = [line for line in lines if line.get("request_id") == "abc-123"]
    assert any(line["message"].startswith("POST /generate 200") for line in tagged), tagged
    assert {"time", "level", "logger", "message"} <= set(tagged[0])


def test_openapi_documents_the_tgi_schemas(server: RunningServer) -> None:
    schema = server.get("/openapi.json").json()
    assert {"/generate", "/generate_stream", "/", "/info", "/health", "/ready", "/metrics"} <= set(
        schema["paths"]
    )
    components = schema["components"]["schemas"]
    assert {"GenerateRequest", "GenerateParameters", "GenerateResponse", "StreamResponse"} <= set(
        components
    )
    assert "429" in schema["paths"]["/generate"]["post"]["responses"]
    assert "max_new_tokens" in components["GenerateParameters"]["properties"]
    assert server.get("/docs").status_code == 200


def test_metrics_are_prometheus_text_with_the_fixed_names(server: RunningServer) -> None:
    generate(server, "Hello", max_new_tokens=3)
    samples = server.metric_samples()
    names = {name for name, _ in samples}
    for histogram in HISTOGRAMS:
        assert f"{histogram}_count" in names, histogram
    for name in (
        "lamini_request_total",
        "lamini_generated_tokens_total",
        "lamini_queue_size",
        "lamini_requests_in_flight",
        "lamini_model_load_seconds",
        "lamini_build_info",
    ):
        assert name in names, name
    assert server.metric("lamini_request_total", model=T5, route="/generate", status="200") > 0
    assert server.metric("lamini_model_load_seconds", model=GPT, stage="load") > 0
