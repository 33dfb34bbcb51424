"""What benchmark and evaluation clients send, on real servers (transformers, CTranslate2 and
the continuous engine):
echo + logprobs prompt scoring, token-id prompts, ignore_eos, min_tokens, continuous usage,
top_k -1 and beyond the vocabulary, response_format by constrained decoding, the placeholder
model names of TGI clients, and the tokenizer routes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.openai_client import GPT, GPT_HUB_ID
from tests.support.server import RunningServer, running_server

pytestmark = pytest.mark.slow

PROMPT_IDS = [464, 3139, 286, 4881, 318]  # "The capital of France is" in GPT-2's vocabulary


@pytest.fixture(scope="module")
def server(tiny_twin: Callable[[str], Path]) -> Iterator[RunningServer]:
    tiny_twin(GPT_HUB_ID)
    with running_server([GPT]) as running:
        yield running


def float32_server(tiny_twin: Callable[[str], Path], engine: str) -> Iterator[RunningServer]:
    """A server of the GPT twin on `engine`, in float32 (so its scores match transformers')."""
    tiny_twin(GPT_HUB_ID)
    env = {"LAMINI_ENGINE": engine, "LAMINI_QUANTIZATION": "float32"}
    with running_server([GPT], env=env) as running:
        yield running


@pytest.fixture(scope="module")
def ct2_server(tiny_twin: Callable[[str], Path]) -> Iterator[RunningServer]:
    yield from float32_server(tiny_twin, "ct2")


@pytest.fixture(scope="module")
def continuous_server(tiny_twin: Callable[[str], Path]) -> Iterator[RunningServer]:
    yield from float32_server(tiny_twin, "continuous")


def complete(server: RunningServer, **fields: Any) -> dict[str, Any]:
    body = {"model": GPT, "temperature": 0, **fields}
    response = server.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def sse_chunks(text: str) -> list[dict[str, Any]]:
    payloads = [event.removeprefix("data: ") for event in text.split("\n\n") if event]
    return [json.loads(payload) for payload in payloads if payload != "[DONE]"]


def test_echo_scores_the_prompt_as_sent(server: RunningServer) -> None:
    choice = complete(server, prompt=PROMPT_IDS, max_tokens=1, logprobs=1, echo=True)["choices"][0]

    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(PROMPT_IDS) + 1
    assert logprobs["token_logprobs"][0] is None
    assert logprobs["top_logprobs"][0] is None
    assert all(value <= 0 for value in logprobs["token_logprobs"][1:])
    for token, value, top in zip(
        logprobs["tokens"][1:],
        logprobs["token_logprobs"][1:],
        logprobs["top_logprobs"][1:],
        strict=True,
    ):
        assert top[token] == pytest.approx(value)
        assert max(top.values()) >= value
    assert choice["text"].startswith("The capital of France is")
    prompt_tokens = logprobs["tokens"][: len(PROMPT_IDS)]
    offsets = logprobs["text_offset"][: len(PROMPT_IDS)]
    pieces = [choice["text"][o : o + len(t)] for o, t in zip(offsets, prompt_tokens, strict=True)]
    assert pieces == prompt_tokens
    generated, start = logprobs["tokens"][-1], logprobs["text_offset"][-1]
    assert choice["text"][start:].startswith(generated.lstrip())


def test_echo_scores_agree_across_engines(
    server: RunningServer, ct2_server: RunningServer, continuous_server: RunningServer
) -> None:
    fields = {"prompt": PROMPT_IDS, "max_tokens": 1, "logprobs": 2, "echo": True}
    reference = complete(server, **fields)["choices"][0]["logprobs"]["token_logprobs"]
    for other in (ct2_server, continuous_server):
        scores = complete(other, **fields)["choices"][0]["logprobs"]["token_logprobs"]
        assert scores[0] is None
        assert scores[1:] == pytest.approx(reference[1:], abs=1e-3)


def test_text_offsets_point_into_the_returned_text(server: RunningServer) -> None:
    """The tidied text loses the first token's leading space: offsets still point at each
    token's own characters in the text returned."""
    choice = complete(server, prompt="Say hi.", max_tokens=6, logprobs=0)["choices"][0]
    text, tokens = choice["text"], choice["logprobs"]["tokens"]
    offsets = choice["logprobs"]["text_offset"]
    assert offsets[0] == 0
    assert text.startswith(tokens[0].lstrip())
    for token, offset in zip(tokens[1:], offsets[1:], strict=True):
        if offset + len(token) <= len(text):
            assert text[offset : offset + len(token)] == token


def test_token_id_prompts_and_lists_of_them(server: RunningServer) -> None:
    single = complete(server, prompt=PROMPT_IDS, max_tokens=3)
    batch = complete(server, prompt=[PROMPT_IDS, PROMPT_IDS[:2]], max_tokens=3)
    assert single["usage"]["prompt_tokens"] == len(PROMPT_IDS)
    assert [choice["index"] for choice in batch["choices"]] == [0, 1]
    assert batch["choices"][0]["text"] == single["choices"][0]["text"]


@pytest.mark.parametrize("engine", ["transformers", "ct2"])
def test_ignore_eos_generates_exactly_max_tokens(
    engine: str, server: RunningServer, ct2_server: RunningServer
) -> None:
    running = server if engine == "transformers" else ct2_server
    usage = complete(running, prompt="Hi", max_tokens=7, ignore_eos=True, min_tokens=2)["usage"]
    assert usage["completion_tokens"] == 7


def test_continuous_usage_on_every_chunk(server: RunningServer) -> None:
    body = {"model": GPT, "prompt": "Hi", "max_tokens": 5, "stream": True, "ignore_eos": True}
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    response = server.post("/v1/completions", json=body)
    assert response.status_code == 200
    chunks = sse_chunks(response.text)
    counts = [chunk["usage"]["completion_tokens"] for chunk in chunks]
    assert counts == sorted(counts)
    assert counts[-1] == 5
    assert all(chunk["usage"] is not None for chunk in chunks)


@pytest.mark.parametrize("top_k", [-1, 50257, 10**6])
def test_top_k_off_or_beyond_the_vocabulary_samples(
    top_k: int, server: RunningServer, ct2_server: RunningServer
) -> None:
    for running in (server, ct2_server):
        complete(running, prompt="Hi", max_tokens=2, temperature=0.7, top_k=top_k, seed=1)
        tgi = running.post("/generate", json={"inputs": "hi", "parameters": {"top_k": top_k}})
        assert tgi.status_code == (422 if top_k < 0 else 200), tgi.text


def test_json_schema_output_parses_and_follows_the_schema(server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    body = {
        "model": GPT,
        "messages": [{"role": "user", "content": "Is the sky blue?"}],
        "max_tokens": 20,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    response = server.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    answer = json.loads(response.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"ok"}
    assert isinstance(answer["ok"], bool)


def test_json_object_on_completions(server: RunningServer) -> None:
    choice = complete(
        server, prompt="Give JSON.", max_tokens=40, response_format={"type": "json_object"}
    )["choices"][0]
    assert choice["text"].startswith("{")
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["text"]), dict)


def test_response_format_on_ct2_names_the_engine_that_can(ct2_server: RunningServer) -> None:
    body = {"model": GPT, "prompt": "Hi", "response_format": {"type": "json_object"}}
    response = ct2_server.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format"
    assert "--backend transformers" in error["message"]


@pytest.mark.parametrize("placeholder", ["tgi", "dummy"])
def test_tgi_placeholder_model_names_mean_the_default_model(
    placeholder: str, server: RunningServer
) -> None:
    body = {"model": placeholder, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert server.post("/v1/chat/completions", json=body).status_code == 200


def test_unknown_model_ids_with_control_characters_are_model_not_found(
    server: RunningServer,
) -> None:
    response = server.get("/v1/models/a%0Ab")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_tokenize_detokenize_and_tokenizer_info(server: RunningServer) -> None:
    tokens = server.post("/tokenize", json={"prompt": "The capital of France is"}).json()
    assert tokens["tokens"] == PROMPT_IDS
    assert tokens["count"] == len(PROMPT_IDS)
    assert server.post("/detokenize", json={"tokens": PROMPT_IDS}).json() == {
        "prompt": "The capital of France is"
    }
    tgi = server.post("/tokenize", json={"inputs": "The capital"}).json()
    assert tgi == [
        {"id": 464, "text": "The", "start": 0, "stop": 3},
        {"id": 3139, "text": " capital", "start": 3, "stop": 11},
    ]
    info = server.get("/tokenizer_info").json()
    assert info["eos_token"] == "<|endoftext|>"
    assert info["vocab_size"] == 50257
    chat = server.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert chat.json()["count"] > 20  # the Alpaca wrapper around the instruction
    assert server.post("/detokenize", json={"tokens": [10**6]}).status_code == 422


@pytest.mark.parametrize(
    "parameters", [{"top_p": 1e-300, "do_sample": True}, {"repetition_penalty": 1e-300}]
)
def test_values_too_small_for_float32_are_no_server_error(
    parameters: dict[str, Any], ct2_server: RunningServer
) -> None:
    body = {"inputs": "hi", "parameters": {"max_new_tokens": 2, **parameters}}
    assert ct2_server.post("/generate", json=body).status_code == 200


def test_v1_body_errors_are_in_openai_shape(server: RunningServer) -> None:
    not_utf8 = server.post("/v1/completions", content=b'{"model": "\xff"}')
    too_large = server.post("/v1/completions", content=b" " * 2_000_000)
    assert (not_utf8.status_code, too_large.status_code) == (400, 413)
    for response in (not_utf8, too_large):
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
