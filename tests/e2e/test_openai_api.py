"""The OpenAI-compatible API, driven by the official `openai` client against a real server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI, OpenAI

from app.core.chat import ChatTurn, chat_to_instruction
from app.core.families import get_family
from tests.support.openai_client import (
    FLAN,
    FLAN_HUB_ID,
    GPT,
    GPT_HUB_ID,
    openai_client,
    prompt_token_count,
)
from tests.support.server import RunningServer, running_server

INSTRUCTION = "Write a short poem about the sea."


@pytest.fixture(scope="module")
def server(tiny_twin: Callable[[str], Path]) -> Iterator[RunningServer]:
    tiny_twin(FLAN_HUB_ID)
    tiny_twin(GPT_HUB_ID)
    with running_server([FLAN, GPT]) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> OpenAI:
    return openai_client(server)


def greedy_completion(client: OpenAI, prompt: str, max_tokens: int = 24) -> str:
    response = client.completions.create(
        model=GPT, prompt=prompt, temperature=0, max_tokens=max_tokens
    )
    return response.choices[0].text


def test_models_lists_every_served_model(client: OpenAI) -> None:
    listed = client.models.list()
    assert [model.id for model in listed.data] == [FLAN, GPT]
    assert client.models.retrieve(GPT).id == GPT


def test_completion_counts_usage_and_reports_length(
    client: OpenAI, tiny_twin: Callable[[str], Path]
) -> None:
    response = client.completions.create(
        model=FLAN, prompt=INSTRUCTION, temperature=0, max_tokens=6, logprobs=0
    )
    (choice,) = response.choices
    expected_prompt = prompt_token_count(
        tiny_twin(FLAN_HUB_ID), get_family("lamini-flan-t5"), INSTRUCTION
    )
    assert response.object == "text_completion"
    assert response.model == FLAN
    assert response.system_fingerprint
    assert response.usage is not None
    assert response.usage.prompt_tokens == expected_prompt
    assert response.usage.completion_tokens == len(choice.logprobs.tokens)
    assert response.usage.total_tokens == expected_prompt + response.usage.completion_tokens
    assert choice.finish_reason == ("length" if response.usage.completion_tokens == 6 else "stop")
    assert all(logprob <= 0 for logprob in choice.logprobs.token_logprobs)


def test_greedy_completion_is_deterministic(client: OpenAI) -> None:
    first = greedy_completion(client, INSTRUCTION)
    assert first
    assert greedy_completion(client, INSTRUCTION) == first


def test_n_choices_for_each_prompt(client: OpenAI, tiny_twin: Callable[[str], Path]) -> None:
    prompts = ["Name a colour.", "Name a river in Europe."]
    response = client.completions.create(
        model=GPT, prompt=prompts, n=2, temperature=0, max_tokens=8
    )
    assert [choice.index for choice in response.choices] == [0, 1, 2, 3]
    texts = [choice.text for choice in response.choices]
    assert texts[0] == texts[1] == greedy_completion(client, prompts[0], max_tokens=8)
    assert texts[2] == texts[3] == greedy_completion(client, prompts[1], max_tokens=8)
    family = get_family("lamini-gpt")
    checkpoint = tiny_twin(GPT_HUB_ID)
    assert response.usage is not None
    assert response.usage.prompt_tokens == sum(
        prompt_token_count(checkpoint, family, prompt) for prompt in prompts
    )


def test_sampled_choices_differ_and_a_seed_repeats_them(client: OpenAI) -> None:
    def sample() -> list[str]:
        response = client.completions.create(
            model=GPT, prompt=INSTRUCTION, n=4, temperature=1.5, seed=1234, max_tokens=16
        )
        return [choice.text for choice in response.choices]

    texts = sample()
    assert len(set(texts)) > 1
    assert sample() == texts


def test_stop_sequence_ends_the_text_before_it(client: OpenAI) -> None:
    full = greedy_completion(client, INSTRUCTION)
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    response = client.completions.create(
        model=GPT, prompt=INSTRUCTION, temperature=0, max_tokens=24, stop=[stop, "@@@"]
    )
    (choice,) = response.choices
    assert choice.finish_reason == "stop"
    assert choice.text == full[: full.index(stop)].strip()
    assert stop not in choice.text


def test_streamed_completion_adds_up_to_the_whole_one(client: OpenAI) -> None:
    whole = client.completions.create(model=GPT, prompt=INSTRUCTION, temperature=0, max_tokens=20)
    chunks = list(
        client.completions.create(
            model=GPT,
            prompt=INSTRUCTION,
            temperature=0,
            max_tokens=20,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    *token_chunks, usage_chunk = chunks
    assert "".join(chunk.choices[0].text for chunk in token_chunks) == whole.choices[0].text
    assert token_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(chunk.usage is None for chunk in token_chunks)
    assert usage_chunk.choices == []
    assert usage_chunk.usage == whole.usage
    assert len({chunk.id for chunk in chunks}) == 1


def test_streamed_choices_are_interleaved_by_index(client: OpenAI) -> None:
    stream = client.completions.create(
        model=GPT, prompt=["Say hi.", "Say bye."], temperature=0, max_tokens=10, stream=True
    )
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for chunk in stream:
        (choice,) = chunk.choices
        texts[choice.index] = texts.get(choice.index, "") + choice.text
        if choice.finish_reason is not None:
            finished[choice.index] = choice.finish_reason
    assert set(finished) == {0, 1}
    assert texts[0] == greedy_completion(client, "Say hi.", max_tokens=10)
    assert texts[1] == greedy_completion(client, "Say bye.", max_tokens=10)


def test_chat_with_one_message_is_the_completion_of_it(client: OpenAI) -> None:
    chat = client.chat.completions.create(
        model=GPT,
        messages=[{"role": "user", "content": INSTRUCTION}],
        temperature=0,
        max_tokens=24,
    )
    completion = client.completions.create(
        model=GPT, prompt=INSTRUCTION, temperature=0, max_tokens=24
    )
    (choice,) = chat.choices
    assert chat.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content == completion.choices[0].text
    assert choice.finish_reason == completion.choices[0].finish_reason
    assert chat.usage == completion.usage


@pytest.mark.parametrize(
    ("model", "hub_id", "family_name"),
    [(FLAN, FLAN_HUB_ID, "lamini-flan-t5"), (GPT, GPT_HUB_ID, "lamini-gpt")],
)
def test_chat_bills_the_flattened_conversation(
    client: OpenAI, tiny_twin: Callable[[str], Path], model: str, hub_id: str, family_name: str
) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": [{"type": "text", "text": "Another one?"}]},
    ]
    response = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_completion_tokens=4
    )
    instruction = chat_to_instruction(
        [ChatTurn("system", "You are terse."), ChatTurn("user", "Name a fruit."),
         ChatTurn("assistant", "Apple."), ChatTurn("user", "Another one?")]
    )  # fmt: skip
    expected = prompt_token_count(tiny_twin(hub_id), get_family(family_name), instruction)
    assert response.usage is not None
    assert response.usage.prompt_tokens == expected
    assert response.usage.completion_tokens <= 4


def test_streamed_chat_announces_the_role_then_adds_up(client: OpenAI) -> None:
    messages = [{"role": "user", "content": INSTRUCTION}]
    whole = client.chat.completions.create(
        model=GPT, messages=messages, temperature=0, max_tokens=16, n=2
    )
    *chunks, usage_chunk = client.chat.completions.create(
        model=GPT,
        messages=messages,
        temperature=0,
        max_tokens=16,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    for index in (0, 1):
        mine = [chunk.choices[0] for chunk in chunks if chunk.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(choice.delta.content or "" for choice in mine) == (
            whole.choices[index].message.content
        )
        assert mine[-1].finish_reason == whole.choices[index].finish_reason
    assert usage_chunk.choices == []
    assert usage_chunk.usage == whole.usage


def test_chat_logprobs_cover_every_generated_token(client: OpenAI) -> None:
    response = client.chat.completions.create(
        model=FLAN,
        messages=[{"role": "user", "content": INSTRUCTION}],
        temperature=0,
        max_tokens=5,
        logprobs=True,
    )
    (choice,) = response.choices
    assert choice.logprobs is not None
    assert choice.logprobs.content is not None
    assert response.usage is not None
    assert len(choice.logprobs.content) == response.usage.completion_tokens
    for entry in choice.logprobs.content:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode("utf-8"))


def test_requests_are_counted_per_route_and_echo_request_ids(server: RunningServer) -> None:
    labels = {"model": FLAN, "route": "/v1/chat/completions", "status": "200"}
    before = server.metric("lamini_request_total", **labels)
    response = server.post(
        "/v1/chat/completions",
        json={"model": FLAN, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"X-Request-ID": "openai-test-42"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "openai-test-42"
    # The access middleware counts the request once the response is sent: give it a moment.
    deadline = time.monotonic() + 5
    while server.metric("lamini_request_total", **labels) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("lamini_request_total", **labels) == before + 1
    assert "openai-test-42" in server.log()


def test_no_configured_keys_means_no_key_is_needed(server: RunningServer) -> None:
    response = server.post("/v1/completions", json={"model": FLAN, "prompt": "Hi", "max_tokens": 2})
    assert response.status_code == 200
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_client_leaving_a_stream_cancels_its_generation(server: RunningServer) -> None:
    before = server.metric("lamini_request_cancelled_total", model=GPT)
    body = {"model": GPT, "prompt": INSTRUCTION, "max_tokens": 500, "temperature": 0.0}
    with (
        server.client() as http,
        http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response,
    ):
        assert response.status_code == 200
        first = next(response.iter_lines())
        assert first.startswith("data: {")
    deadline = time.monotonic() + 10
    while server.metric("lamini_request_cancelled_total", model=GPT) == before:
        assert time.monotonic() < deadline, "the abandoned stream was never cancelled"
        time.sleep(0.05)


@pytest.mark.slow
def test_concurrent_streamed_and_whole_requests_agree(server: RunningServer) -> None:
    """Sixty overlapping greedy chats (half streamed, n=2) batch together and still agree."""
    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    questions = [f"Question number {i}?" for i in range(5)]

    async def answer(i: int) -> tuple[str, list[str]]:
        question = questions[i % len(questions)]
        arguments = {
            "model": GPT,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 30,
            "n": 2,
        }
        if i % 2 == 0:
            whole = await client.chat.completions.create(**arguments)
            return question, [choice.message.content or "" for choice in whole.choices]
        texts = ["", ""]
        async for chunk in await client.chat.completions.create(**arguments, stream=True):
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
        return question, texts

    async def answer_all() -> list[tuple[str, list[str]]]:
        return list(await asyncio.gather(*(answer(i) for i in range(60))))

    answers: dict[str, set[str]] = {}
    for question, texts in asyncio.run(answer_all()):
        answers.setdefault(question, set()).update(texts)
    assert answers.keys() == set(questions)
    assert all(len(texts) == 1 for texts in answers.values()), answers
