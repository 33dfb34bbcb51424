"""Under concurrent load every request is answered correctly, requests really share batches,
greedy output over HTTP is the engine's own output, and the histograms move."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from app.engines.base import EngineRequest, SamplingParams
from app.settings import Settings
from model_store.resolver import load_model
from tests.support.server import HISTOGRAMS, RunningServer, running_server

MODEL = "twin:MBZUAI/LaMini-GPT-124M@tiny"
PROMPTS = ["Name a colour.", "Say hi.", "Write a haiku about the sea.", "Count to three."]
MAX_NEW_TOKENS = 8


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    args = ["--max-batch-size", "16", "--max-batch-wait-ms", "50"]
    with running_server([MODEL], args=args) as running:
        yield running


@pytest.fixture(scope="module")
def engine_answers() -> dict[str, str]:
    """What the engine itself answers for each prompt, greedy, outside the server."""
    loaded = load_model(MODEL, Settings(engine="transformers", intra_threads=1))
    engine, prompt_format = loaded.engine, loaded.engine.family.prompt_format
    answers = {}
    for prompt in PROMPTS:
        request = EngineRequest(
            engine.encode(prompt_format.wrap(prompt)),
            MAX_NEW_TOKENS,
            stop=prompt_format.stop_sequences,
        )
        (generation,) = engine.generate([request], SamplingParams())
        answers[prompt] = prompt_format.tidy(generation.text)
    return answers


def histogram_count(server: RunningServer, name: str) -> float:
    return server.metric(f"{name}_count", model=MODEL)


async def post_all(base_url: str, prompts: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        return await asyncio.gather(
            *(
                client.post(
                    "/generate",
                    json={"inputs": p, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}},
                )
                for p in prompts
            )
        )


def test_greedy_output_over_http_is_the_engines_output(
    server: RunningServer, engine_answers: dict[str, str]
) -> None:
    for prompt, answer in engine_answers.items():
        response = server.post(
            "/generate", json={"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
        )
        assert response.json()["generated_text"] == answer


def test_64_concurrent_requests_are_answered_correctly_in_shared_batches(
    server: RunningServer, engine_answers: dict[str, str]
) -> None:
    before = {name: histogram_count(server, name) for name in HISTOGRAMS}
    batches_before = before["lamini_batch_size"]
    sequences_before = server.metric("lamini_batch_size_sum", model=MODEL)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(64)]

    responses = asyncio.run(post_all(server.base_url, prompts))

    assert [r.status_code for r in responses] == [200] * 64
    assert [r.json()["generated_text"] for r in responses] == [engine_answers[p] for p in prompts]
    batches = histogram_count(server, "lamini_batch_size") - batches_before
    sequences = server.metric("lamini_batch_size_sum", model=MODEL) - sequences_before
    assert sequences == 64
    assert sequences / batches > 1, f"{batches} batches for 64 requests: nothing was batched"
    for name, count in before.items():
        if name != "lamini_batch_size":
            assert histogram_count(server, name) >= count + 64, name
    assert server.metric("lamini_requests_in_flight", model=MODEL) == 0
    assert server.metric("lamini_queue_size", model=MODEL) == 0


def test_concurrent_streams_are_batched_too(server: RunningServer) -> None:
    async def stream_all() -> list[str]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:

            async def one(prompt: str) -> str:
                body = {"inputs": prompt, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}}
                response = await client.post("/generate_stream", json=body)
                return response.text

            return await asyncio.gather(*(one(p) for p in PROMPTS * 4))

    sequences_before = server.metric("lamini_batch_size_sum", model=MODEL)
    batches_before = histogram_count(server, "lamini_batch_size")
    bodies = asyncio.run(stream_all())
    assert all(body.count("data:") >= 1 and '"generated_text": "' in body for body in bodies)
    batches = histogram_count(server, "lamini_batch_size") - batches_before
    assert (server.metric("lamini_batch_size_sum", model=MODEL) - sequences_before) / batches > 1
