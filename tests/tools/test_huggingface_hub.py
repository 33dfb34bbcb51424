"""`huggingface_hub.InferenceClient(base_url=...)` chat, as a TGI user would call it: the
client sends `model: "dummy"`, which TGI ignores and this server reads as the default model."""

from __future__ import annotations

import pytest
from huggingface_hub import InferenceClient

from tests.support.server import RunningServer

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Name three colours."}]


def test_inference_client_chat_completion(gpt_server: RunningServer) -> None:
    client = InferenceClient(base_url=gpt_server.base_url)

    output = client.chat_completion(MESSAGES, max_tokens=8, temperature=0)

    assert output.choices[0].message.role == "assistant"
    assert isinstance(output.choices[0].message.content, str)
    assert 1 <= output.usage.completion_tokens <= 8


def test_inference_client_chat_completion_streams(gpt_server: RunningServer) -> None:
    client = InferenceClient(base_url=gpt_server.base_url)

    chunks = list(client.chat_completion(MESSAGES, max_tokens=8, temperature=0, stream=True))

    assert chunks
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
