"""Bad input gets a 4xx JSON error saying what is wrong - never a 500, never a hang."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.server import RunningServer, running_server

MODEL = "twin:MBZUAI/LaMini-Flan-T5-77M@tiny"
LONG_INPUT = "word " * 700  # more than the 512 input tokens of a T5 model


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server([MODEL], args=["--max-body-bytes", "100000"]) as running:
        yield running


def assert_error(response, status: int, mentions: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert mentions.lower() in body["error"].lower(), body["error"]


def body_with(**parameters: object) -> dict:
    return {"inputs": "Say hi.", "parameters": parameters}


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({"parameters": {}}, "inputs"),
        ({"inputs": ""}, "inputs"),
        ({"inputs": "   "}, "inputs"),
        ({"inputs": []}, "inputs"),
        ({"inputs": 42}, "inputs"),
        ({"inputs": "hi", "parameters": "fast"}, "parameters"),
        ({"inputs": "hi", "surprise": 1}, "surprise"),
        (body_with(max_new_tokens="many"), "max_new_tokens"),
        (body_with(max_new_tokens=0), "max_new_tokens"),
        (body_with(max_new_tokens=-5), "max_new_tokens"),
        (body_with(max_new_tokens=10**9), "max_new_tokens"),
        (body_with(max_new_tokens=10**30), "max_new_tokens"),
        (body_with(max_new_tokens=2.5), "max_new_tokens"),
        (body_with(do_sample="perhaps"), "do_sample"),
        (body_with(max_new_tokens="20"), "max_new_tokens"),
        (body_with(max_new_tokens=True), "max_new_tokens"),
        (body_with(details="yes"), "details"),
        (body_with(temperature="0.5"), "temperature"),
        (body_with(do_sample=True, temperature=0), "temperature"),
        (body_with(temperature=-1), "temperature"),
        (body_with(do_sample=True, temperature=1e-45), "temperature"),
        (body_with(top_p=0), "top_p"),
        (body_with(top_p=1.5), "top_p"),
        (body_with(top_k=-1), "top_k"),
        (body_with(repetition_penalty=0), "repetition_penalty"),
        (body_with(repetition_penalty=-1.0), "repetition_penalty"),
        (body_with(seed=-1), "seed"),
        (body_with(stop="abc"), "stop"),
        (body_with(stop=[""]), "stop"),
        (body_with(stop=[f"s{i}" for i in range(9)]), "stop"),
        (body_with(truncate=0), "truncate"),
        (body_with(truncate=100_000), "truncate"),
        (body_with(best_of=2), "best_of"),
        (body_with(watermark=True), "watermark"),
        (body_with(top_n_tokens=3), "top_n_tokens"),
        (body_with(decoder_input_details=True), "decoder_input_details"),
        (body_with(grammar={"type": "json", "value": {}}), "grammar"),
        (body_with(no_such_parameter=1), "no_such_parameter"),
        ({"inputs": LONG_INPUT}, "truncate"),
        ({"inputs": ["hi"] * 33}, "max_client_batch_size"),
        ({"inputs": "hi", "stream": True}, "generate_stream"),
    ],
)
def test_invalid_generate_requests_are_422(server: RunningServer, body: dict, mentions: str):
    assert_error(server.post("/generate", json=body), 422, mentions)


def test_neutral_values_of_unsupported_parameters_are_accepted(server: RunningServer) -> None:
    neutral = body_with(
        max_new_tokens=2, best_of=1, typical_p=None, watermark=False, decoder_input_details=False,
        top_n_tokens=None, grammar=None, adapter_id=None, frequency_penalty=None, top_p=1.0,
        temperature=None, top_k=None, repetition_penalty=None, truncate=None, stop=None,
    )  # fmt: skip
    assert server.post("/generate", json=neutral).status_code == 200


def test_non_finite_numbers_are_rejected(server: RunningServer) -> None:
    raw = '{"inputs": "hi", "parameters": {"do_sample": true, "temperature": NaN}}'
    assert_error(server.post("/generate", content=raw), 422, "temperature")
    raw = '{"inputs": "hi", "parameters": {"top_p": Infinity}}'
    assert_error(server.post("/generate", content=raw), 422, "top_p")


def test_lone_surrogates_are_rejected(server: RunningServer) -> None:
    raw = '{"inputs": "hi \\ud800 there"}'
    assert_error(server.post("/generate", content=raw), 422, "unicode")


def test_invalid_json_is_400(server: RunningServer) -> None:
    assert_error(server.post("/generate", content=b'{"inputs": "hi"'), 400, "JSON")
    assert_error(server.post("/generate", content=b"[" * 50_000), 400, "JSON")
    huge_number = b'{"inputs": "hi", "parameters": {"seed": ' + b"9" * 5000 + b"}}"
    assert_error(server.post("/generate", content=huge_number), 400, "JSON")
    assert_error(server.post("/generate", content=b""), 422, "")


@pytest.mark.parametrize("body", [b"[1, 2]", b"null", b'"hi"'])
def test_a_body_that_is_not_an_object_is_422(server: RunningServer, body: bytes) -> None:
    assert_error(server.post("/generate", content=body), 422, "")


def test_invalid_utf8_is_400(server: RunningServer) -> None:
    assert_error(server.post("/generate", content=b'{"inputs": "\xff\xfe"}'), 400, "UTF-8")


def test_body_over_the_limit_is_413(server: RunningServer) -> None:
    body = json.dumps({"inputs": "x" * 200_000}).encode()
    assert_error(server.post("/generate", content=body), 413, "max_body_bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"inputs": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    assert_error(server.post("/generate", content=chunks()), 413, "max_body_bytes")


def test_truncate_keeps_the_last_tokens_of_a_long_input(server: RunningServer) -> None:
    response = server.post(
        "/generate",
        json={"inputs": LONG_INPUT, "parameters": {"truncate": 16, "max_new_tokens": 2,
                                                   "details": True}},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    stream = server.post(
        "/generate_stream",
        json={"inputs": LONG_INPUT, "parameters": {"truncate": 16, "max_new_tokens": 2,
                                                   "details": True}},
    )  # fmt: skip
    last = json.loads(stream.text.strip().split("\n\n")[-1].removeprefix("data:"))
    assert last["details"]["input_length"] == 16


def test_streaming_validation_errors_are_plain_json_not_events(server: RunningServer) -> None:
    assert_error(server.post("/generate_stream", json={"inputs": ["a", "b"]}), 422, "string")
    assert_error(server.post("/generate_stream", json=body_with(top_k=-3)), 422, "top_k")


def test_unknown_route_and_method_are_json(server: RunningServer) -> None:
    assert server.get("/nope").json()["error_type"] == "not_found"
    response = server.get("/generate")
    assert response.status_code == 405
    assert set(response.json()) == {"error", "error_type"}
