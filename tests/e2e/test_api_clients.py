"""Third-party TGI clients work unchanged: the `text-generation` client and
`huggingface_hub.InferenceClient`, plain, with details and streaming."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from huggingface_hub import InferenceClient
from text_generation import Client
from text_generation.errors import ValidationError

from tests.support.server import RunningServer, running_server

MODEL = "twin:MBZUAI/LaMini-Flan-T5-77M@tiny"
PROMPT = "Give three tips for staying healthy."


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with running_server([MODEL]) as running:
        yield running


@pytest.fixture(scope="module")
def expected(server: RunningServer) -> dict:
    """The server's own answer over plain HTTP, which every client must see too."""
    response = server.post(
        "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 6, "details": True}}
    )
    assert response.status_code == 200
    return response.json()


def test_text_generation_client_generate_with_details(server: RunningServer, expected) -> None:
    response = Client(server.base_url, timeout=60).generate(PROMPT, max_new_tokens=6)
    assert response.generated_text == expected["generated_text"]
    assert response.details.generated_tokens == expected["details"]["generated_tokens"]
    assert response.details.finish_reason.value == expected["details"]["finish_reason"]
    assert [t.id for t in response.details.tokens] == [
        t["id"] for t in expected["details"]["tokens"]
    ]


def test_text_generation_client_streams(server: RunningServer, expected) -> None:
    events = list(Client(server.base_url, timeout=60).generate_stream(PROMPT, max_new_tokens=6))
    assert [e.token.id for e in events] == [t["id"] for t in expected["details"]["tokens"]]
    assert events[-1].generated_text == expected["generated_text"]
    assert events[-1].details.generated_tokens == len(events)
    assert all(e.generated_text is None for e in events[:-1])


def test_text_generation_client_sees_validation_errors(server: RunningServer) -> None:
    with pytest.raises(ValidationError, match="max_new_tokens"):
        Client(server.base_url, timeout=60).generate(PROMPT, max_new_tokens=10**9)


def test_inference_client_text_generation(server: RunningServer, expected) -> None:
    client = InferenceClient(server.base_url, timeout=60)
    assert client.text_generation(PROMPT, max_new_tokens=6) == expected["generated_text"]

    detailed = client.text_generation(PROMPT, max_new_tokens=6, details=True)
    assert detailed.generated_text == expected["generated_text"]
    assert detailed.details.finish_reason == expected["details"]["finish_reason"]
    assert [t.id for t in detailed.details.tokens] == [
        t["id"] for t in expected["details"]["tokens"]
    ]


def test_inference_client_streams_tokens_and_details(server: RunningServer, expected) -> None:
    client = InferenceClient(server.base_url, timeout=60)
    texts = list(client.text_generation(PROMPT, max_new_tokens=6, stream=True))
    assert texts == [t["text"] for t in expected["details"]["tokens"]]

    events = list(client.text_generation(PROMPT, max_new_tokens=6, stream=True, details=True))
    assert events[-1].generated_text == expected["generated_text"]
    assert events[-1].details.generated_tokens == len(events)
    assert events[-1].details.input_length > 0
