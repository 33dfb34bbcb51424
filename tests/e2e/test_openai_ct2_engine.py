"""The OpenAI routes on CTranslate2, converted through the store (the converted engine `auto`
runs for most families, and Flan-T5's off the CPU), rather than the reference engine the other
API tests use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.support.openai_client import FLAN, FLAN_HUB_ID, openai_client
from tests.support.server import RunningServer, running_server

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def client(tiny_twin: Callable[[str], Path]) -> Iterator[OpenAI]:
    tiny_twin(FLAN_HUB_ID)
    server: RunningServer
    with running_server([FLAN], env={"LAMINI_ENGINE": "ct2"}) as server:
        assert server.get("/info").json()["engine"] == "ct2"
        yield openai_client(server)


def test_streamed_chat_matches_the_whole_answer(client: OpenAI) -> None:
    arguments = {"model": FLAN, "messages": MESSAGES, "temperature": 0, "max_tokens": 12}
    whole = client.chat.completions.create(**arguments, logprobs=True)
    streamed = client.chat.completions.create(**arguments, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert text == whole.choices[0].message.content
    assert whole.choices[0].logprobs is not None
    assert all(entry.logprob <= 0 for entry in whole.choices[0].logprobs.content or [])


def test_64_bit_seeds_sample_distinct_choices_reproducibly(client: OpenAI) -> None:
    """CTranslate2 takes 32-bit seeds only; OpenAI's are 64-bit."""

    def sample() -> list[str]:
        response = client.completions.create(
            model=FLAN, prompt="Tell me a story.", n=3, seed=2**63 - 2, max_tokens=10
        )
        return [choice.text for choice in response.choices]

    first = sample()
    assert len(set(first)) > 1
    assert sample() == first
