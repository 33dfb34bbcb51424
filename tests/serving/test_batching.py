"""The batcher with the real transformers engine on a tiny twin: requests that arrive together
share a batch, incompatible ones do not, limits hold, and cancellation frees work."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager

import pytest

from app.engines.base import EngineRequest, FinishReason, SamplingParams
from app.serving.batching import Batcher, BatchLimits
from app.serving.errors import OverloadedError, UnavailableError
from app.serving.metrics import Metrics
from app.settings import Settings
from model_store.resolver import LoadedModel, load_model

MODEL = "twin:MBZUAI/LaMini-GPT-124M@tiny"
GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model(MODEL, Settings(engine="transformers", intra_threads=1))


def limits(**overrides: float) -> BatchLimits:
    values = {
        "max_batch_size": 8,
        "max_batch_wait_s": 0.3,
        "batch_quiet_s": 0.3,
        "max_batch_tokens": 100_000,
        "max_queue_size": 64,
    } | overrides
    return BatchLimits(**values)  # type: ignore[arg-type]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@contextmanager
def make_batcher(loaded: LoadedModel, metrics: Metrics, **overrides: float) -> Iterator[Batcher]:
    batcher = Batcher(loaded.engine, limits(**overrides), metrics.for_model("m"))
    try:
        yield batcher
    finally:
        batcher.close(timeout=30)


def batch_sizes(metrics: Metrics) -> tuple[float, float]:
    """(number of batches, sum of their sizes)."""
    registry = metrics.registry
    count = registry.get_sample_value("lamini_batch_size_count", {"model": "m"}) or 0.0
    total = registry.get_sample_value("lamini_batch_size_sum", {"model": "m"}) or 0.0
    return count, total


def prompt(loaded: LoadedModel, text: str) -> list[int]:
    return loaded.engine.encode(loaded.engine.family.prompt_format.wrap(text))


def test_requests_arriving_together_share_one_batch_and_match_solo_runs(
    loaded: LoadedModel, metrics: Metrics
) -> None:
    texts = ["Name a colour.", "Say hi.", "Write a haiku about the sea, please.", "Count to 3."]
    solo = [
        loaded.engine.generate([EngineRequest(prompt(loaded, t), max_new_tokens=8)], GREEDY)[0]
        for t in texts
    ]
    with make_batcher(loaded, metrics) as batcher:
        tickets = [batcher.submit(prompt(loaded, t), 8, GREEDY) for t in texts]
        results = [ticket.future.result(timeout=60) for ticket in tickets]

    assert batch_sizes(metrics) == (1.0, 4.0)
    assert [r.token_ids for r in results] == [s.token_ids for s in solo]


def test_different_sampling_parameters_never_share_a_batch(
    loaded: LoadedModel, metrics: Metrics
) -> None:
    sampled = SamplingParams(do_sample=True, temperature=0.7, seed=1)
    with make_batcher(loaded, metrics) as batcher:
        tickets = [batcher.submit(prompt(loaded, "Hi"), 4, s) for s in (GREEDY, sampled, GREEDY)]
        for ticket in tickets:
            ticket.future.result(timeout=60)

    assert batch_sizes(metrics) == (2.0, 3.0)


def test_batch_size_and_token_limits_split_batches(loaded: LoadedModel, metrics: Metrics) -> None:
    ids = prompt(loaded, "Hello there")
    with make_batcher(loaded, metrics, max_batch_size=3) as batcher:
        for ticket in [batcher.submit(ids, 2, GREEDY) for _ in range(5)]:
            ticket.future.result(timeout=60)
    assert batch_sizes(metrics) == (2.0, 5.0)

    token_metrics = Metrics()
    cost = len(ids) + 2
    with make_batcher(loaded, token_metrics, max_batch_tokens=2 * cost) as batcher:
        for ticket in [batcher.submit(ids, 2, GREEDY) for _ in range(4)]:
            ticket.future.result(timeout=60)
    assert batch_sizes(token_metrics) == (2.0, 4.0)


def test_full_queue_rejects_and_counts(loaded: LoadedModel, metrics: Metrics) -> None:
    ids = prompt(loaded, "Hello")
    with make_batcher(loaded, metrics, max_queue_size=2, max_batch_wait_s=5) as batcher:
        batcher.submit(ids, 2, GREEDY)
        batcher.submit(ids, 2, GREEDY)
        with pytest.raises(OverloadedError, match="max_queue_size"):
            batcher.submit(ids, 2, GREEDY)
    rejected = metrics.registry.get_sample_value(
        "lamini_request_rejected_total", {"model": "m", "reason": "queue_full"}
    )
    assert rejected == 1.0


def test_cancelling_a_queued_request_drops_it(loaded: LoadedModel, metrics: Metrics) -> None:
    ids = prompt(loaded, "Hello")
    with make_batcher(loaded, metrics, max_batch_wait_s=0.5) as batcher:
        dropped = batcher.submit(ids, 2, GREEDY)
        kept = batcher.submit(ids, 2, GREEDY)
        batcher.cancel(dropped)
        assert batcher.queue_size == 1
        assert kept.future.result(timeout=60).finish_reason is FinishReason.LENGTH
        with pytest.raises(CancelledError):
            dropped.future.result(timeout=1)
    assert batch_sizes(metrics) == (1.0, 1.0)


def test_cancelling_a_running_request_stops_its_tokens(
    loaded: LoadedModel, metrics: Metrics
) -> None:
    first_token = threading.Event()
    ids = prompt(loaded, "Tell a long story")
    with make_batcher(loaded, metrics, max_batch_wait_s=0) as batcher:
        ticket = batcher.submit(ids, 500, GREEDY, on_token=lambda _token, _last: first_token.set())
        assert first_token.wait(30)
        batcher.cancel(ticket)
        generation = ticket.future.result(timeout=60)
    assert generation.finish_reason is FinishReason.CANCELLED
    assert len(generation.tokens) < 500


def test_closed_batcher_refuses_new_requests(loaded: LoadedModel, metrics: Metrics) -> None:
    batcher = Batcher(loaded.engine, limits(), metrics.for_model("m"))
    batcher.close(timeout=30)
    with pytest.raises(UnavailableError, match="shutting down"):
        batcher.submit(prompt(loaded, "Hi"), 2, GREEDY)


def test_a_request_that_ends_early_is_answered_before_its_batch_ends(
    loaded: LoadedModel, metrics: Metrics
) -> None:
    ids = loaded.engine.encode("Tell me a story.")
    with make_batcher(loaded, metrics) as batcher:
        short = batcher.submit(ids, 2, GREEDY)
        long = batcher.submit(ids, 400, GREEDY)
        generation = short.future.result(timeout=60)
        long_still_running = not long.future.done()
        long.future.result(timeout=120)

    assert len(generation.tokens) == 2
    assert long_still_running
    assert batch_sizes(metrics) == (1.0, 2.0)


def test_a_lone_request_starts_after_the_quiet_window_not_the_longest_wait(
    loaded: LoadedModel, metrics: Metrics
) -> None:
    with make_batcher(loaded, metrics, max_batch_wait_s=3.0, batch_quiet_s=0.1) as batcher:
        ticket = batcher.submit(prompt(loaded, "Hello"), 2, GREEDY)
        ticket.future.result(timeout=60)
    assert ticket.started_at is not None
    assert 0.1 <= ticket.started_at - ticket.enqueued_at < 2.0


def test_requests_sent_right_after_a_batch_ends_join_the_ones_queued_during_it(
    loaded: LoadedModel, metrics: Metrics
) -> None:
    """Closed-loop clients: the one just answered comes back at once; its next request must
    share a batch with the request that queued while the engine was busy (else the load splits
    into alternating half-size batches)."""
    running = threading.Event()
    long_run = SamplingParams(min_new_tokens=300)
    with make_batcher(loaded, metrics, max_batch_wait_s=3.0, batch_quiet_s=0.05) as batcher:
        first = batcher.submit(
            prompt(loaded, "Tell a story"), 300, long_run, on_token=lambda _t, _l: running.set()
        )
        assert running.wait(30)
        queued = batcher.submit(prompt(loaded, "Say hi."), 4, GREEDY)
        first.future.result(timeout=60)
        follow_up = batcher.submit(prompt(loaded, "Count to 3."), 4, GREEDY)
        for ticket in (queued, follow_up):
            ticket.future.result(timeout=60)
    assert batch_sizes(metrics) == (2.0, 3.0)
    assert queued.started_at is not None
    assert queued.started_at - queued.enqueued_at > 0.05  # it queued longer than the window
    assert queued.started_at == follow_up.started_at
