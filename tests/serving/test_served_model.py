"""The serving layer in process: preparation, answers, streams, limits, cancellation, timeouts,
on a scripted engine (real tokenizer, real batcher, no model)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.core.families import get_family
from app.serving.errors import (
    ClientDisconnectedError,
    InvalidRequestError,
    OverloadedError,
    RequestTimeoutError,
)
from app.serving.metrics import Metrics
from app.serving.preparation import GenerationOptions, sampling_for
from app.serving.served_model import ServedModel
from app.settings import Settings
from tests.support.asgi import metric_sum
from tests.support.scripted_engine import ScriptedEngine

pytestmark = pytest.mark.anyio

GREEDY = GenerationOptions()


@pytest.fixture
async def served() -> AsyncIterator[ServedModel]:
    model = _served(ScriptedEngine())
    yield model
    await asyncio.to_thread(model.close)


def _served(engine: ScriptedEngine, **settings: object) -> ServedModel:
    config = Settings(models=["scripted"], batch_quiet_ms=1, max_batch_wait_ms=5, **settings)
    return ServedModel("scripted", engine, config, Metrics().for_model("scripted"))


async def test_prompts_get_the_family_format_and_the_server_stop_order(
    served: ServedModel,
) -> None:
    options = GenerationOptions(stop=("user stop",))
    (prepared,) = await served.prepare_all(["Name a river."], options)

    alpaca = get_family("lamini-gpt").prompt_format
    assert served.engine.tokenizer.decode(prepared.prompt_ids) == alpaca.wrap("Name a river.")
    assert prepared.stop == ("user stop", *alpaca.stop_sequences)


async def test_raw_prompts_are_sent_as_they_are(served: ServedModel) -> None:
    options = GenerationOptions(raw_prompt=True)
    (prepared,) = await served.prepare_all(["just this"], options)

    assert served.engine.tokenizer.decode(prepared.prompt_ids) == "just this"


async def test_generations_per_request_are_limited_across_copies(served: ServedModel) -> None:
    limit = served.settings.max_client_batch_size
    await served.prepare_all(["a"] * limit, GREEDY)

    with pytest.raises(InvalidRequestError, match="max_client_batch_size"):
        await served.prepare_all(["a", "b"], GREEDY, copies=limit)


async def test_too_long_input_is_refused_unless_truncated() -> None:
    model = _served(ScriptedEngine(max_input_tokens=40, max_total_tokens=60))
    long_prompt = "word " * 100
    with pytest.raises(InvalidRequestError, match="truncate"):
        await model.prepare_all([long_prompt], GREEDY)

    (prepared,) = await model.prepare_all([long_prompt], GenerationOptions(truncate=10))
    assert len(prepared.prompt_ids) == 10
    assert prepared.max_new_tokens == min(model.settings.default_max_new_tokens, 60 - 10)
    await asyncio.to_thread(model.close)


async def test_too_many_new_tokens_name_the_room_left(served: ServedModel) -> None:
    with pytest.raises(InvalidRequestError, match="max_new_tokens"):
        await served.prepare_all(["hi"], GenerationOptions(max_new_tokens=5000))


async def test_an_answer_is_tidied_and_reports_why_it_ended(served: ServedModel) -> None:
    (prepared,) = await served.prepare_all(["hi"], GenerationOptions(max_new_tokens=4))
    answer = await served.complete(prepared)

    assert answer.text == "The answer is forty"  # tidied: the leading space is stripped
    assert answer.finish_reason.value == "length"
    assert len(answer.tokens) == 4
    assert answer.input_tokens == len(prepared.prompt_ids)


async def test_a_stop_sequence_ends_the_answer_with_it(served: ServedModel) -> None:
    options = GenerationOptions(max_new_tokens=20, stop=("forty",))
    (prepared,) = await served.prepare_all(["hi"], options)
    answer = await served.complete(prepared)

    assert answer.text == "The answer is forty"
    assert answer.finish_reason.value == "stop_sequence"


async def test_a_stream_sends_each_token_and_the_answer_last(served: ServedModel) -> None:
    (prepared,) = await served.prepare_all(["hi"], GenerationOptions(max_new_tokens=5))
    events = [event async for event in served.stream(prepared)]

    assert [event.index for event in events] == [1, 2, 3, 4, 5]
    assert all(event.answer is None for event in events[:-1])
    final = events[-1].answer
    assert final is not None
    assert "".join(event.token.text for event in events).strip() == final.text


async def test_requests_with_other_sampling_settings_batch_apart(served: ServedModel) -> None:
    sampled = GenerationOptions(
        sampling=sampling_for(
            True, temperature=0.7, top_p=None, top_k=None, repetition_penalty=None, seed=3
        ),
        max_new_tokens=3,
    )
    greedy = GenerationOptions(max_new_tokens=3)
    prepared = [
        *(await served.prepare_all(["a", "b"], greedy)),
        *(await served.prepare_all(["c"], sampled)),
    ]
    await served.complete_all(prepared, asyncio.Event().wait())

    engine = served.engine
    assert isinstance(engine, ScriptedEngine)
    assert sorted(size for size, _ in engine.batches) == [1, 2]
    assert {sampling.do_sample for _, sampling in engine.batches} == {True, False}


async def test_a_disconnect_cancels_the_running_request_and_frees_its_slot() -> None:
    engine = ScriptedEngine()
    model = _served(engine)
    engine.hold_steps()
    (prepared,) = await model.prepare_all(["hi"], GenerationOptions(max_new_tokens=20))
    disconnected = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(model.complete(prepared, disconnected))
    await _until(lambda: engine.batches)

    disconnected.set_result(None)
    with pytest.raises(ClientDisconnectedError):
        await task
    engine.release_steps()
    await _until(lambda: _gauge(model, "lamini_requests_in_flight") == 0)
    assert _gauge(model, "lamini_request_cancelled_total") == 1
    await asyncio.to_thread(model.close)


async def test_a_full_queue_refuses_with_overloaded() -> None:
    engine = ScriptedEngine()
    model = _served(engine, max_queue_size=1)
    engine.hold_steps()
    options = GenerationOptions(max_new_tokens=2)
    running = asyncio.ensure_future(model.complete((await model.prepare_all(["a"], options))[0]))
    await _until(lambda: engine.batches)
    queued = asyncio.ensure_future(model.complete((await model.prepare_all(["b"], options))[0]))
    await _until(lambda: model.batcher.queue_size == 1)

    with pytest.raises(OverloadedError, match="max_queue_size"):
        await model.complete((await model.prepare_all(["c"], options))[0])
    engine.release_steps()
    assert len((await running).tokens) == 2
    assert len((await queued).tokens) == 2
    await asyncio.to_thread(model.close)


async def test_a_request_over_its_time_limit_times_out_and_is_counted() -> None:
    engine = ScriptedEngine()
    model = _served(engine, request_timeout_s=0.2)
    engine.hold_steps()
    (prepared,) = await model.prepare_all(["hi"], GenerationOptions(max_new_tokens=4))

    with pytest.raises(RequestTimeoutError, match="request_timeout_s"):
        await model.complete(prepared)
    engine.release_steps()
    assert _gauge(model, "lamini_request_rejected_total", reason="timeout") == 1
    await asyncio.to_thread(model.close)


def _gauge(model: ServedModel, name: str, **labels: str) -> float:
    return metric_sum(model.metrics.metrics.registry, name, model="scripted", **labels)


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)
