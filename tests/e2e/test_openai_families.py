"""Chat through the API for every family: the conversation reaches the model as the documented
instruction in the family's own prompt format (checked by the prompt tokens billed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from app.core.chat import ChatTurn, chat_to_instruction
from app.core.families import get_family
from tests.support.openai_client import openai_client, prompt_token_count
from tests.support.server import running_server
from tests.support.twins import FAMILY_TWINS

pytestmark = pytest.mark.slow

CONVERSATION = [
    ChatTurn("system", "You answer in one line."),
    ChatTurn("user", "What is\tthe capital of France?"),
    ChatTurn("assistant", "Paris."),
    ChatTurn("user", "And of Italy?\nJust the name."),
]


def served_name(hub_id: str) -> str:
    return f"twin:{hub_id}@tiny"


@pytest.fixture(scope="module")
def client(tiny_twin: Callable[[str], Path]) -> Iterator[OpenAI]:
    for hub_id in FAMILY_TWINS.values():
        tiny_twin(hub_id)
    models = [served_name(hub_id) for hub_id in FAMILY_TWINS.values()]
    with running_server(models, ready_timeout=300) as server:
        yield openai_client(server)


@pytest.mark.parametrize("family_name", sorted(FAMILY_TWINS))
def test_chat_reaches_every_family_in_its_prompt_format(
    client: OpenAI, tiny_twin: Callable[[str], Path], family_name: str
) -> None:
    hub_id = FAMILY_TWINS[family_name]
    response = client.chat.completions.create(
        model=served_name(hub_id),
        messages=[{"role": turn.role, "content": turn.text} for turn in CONVERSATION],
        temperature=0,
        max_tokens=4,
    )
    instruction = chat_to_instruction(CONVERSATION)
    expected = prompt_token_count(tiny_twin(hub_id), get_family(family_name), instruction)
    assert response.usage is not None
    assert response.usage.prompt_tokens == expected
    assert response.choices[0].finish_reason in ("stop", "length")
