"""The step scheduler with the continuous engine on a tiny twin: a request arriving while
others run starts at once, limits and the KV-cache budget hold (requests wait, none is lost),
cancellation and shutdown answer every ticket, and the step metrics are observed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from app.engines.base import EngineRequest, FinishReason, GeneratedToken, SamplingParams
from app.serving.batching import WINDOW_BATCH_SIZE, batch_limits
from app.serving.errors import InvalidRequestError, OverloadedError, UnavailableError
from app.serving.metrics import Metrics
from app.serving.scheduler import RUNNING_SEQUENCES, StepLimits, StepScheduler, scheduler_limits
from app.settings import Settings
from model_store.resolver import LoadedModel, load_model

MODEL = "twin:MBZUAI/LaMini-GPT-124M@tiny"
GREEDY = SamplingParams()
LONG, SHORT = 60, 3


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    """The engine without a prefix cache: each test's prefills compute every prompt token."""
    return load_model(
        MODEL, Settings(engine="continuous", quantization="float32", prefix_cache_mb=0)
    )


@pytest.fixture(scope="module")
def loaded_with_prefix_cache() -> LoadedModel:
    return load_model(MODEL, Settings(engine="continuous", quantization="float32"))


@pytest.fixture(scope="module")
def t5() -> LoadedModel:
    return load_model(
        "twin:MBZUAI/LaMini-Flan-T5-248M@tiny",
        Settings(engine="continuous", quantization="float32"),
    )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@contextmanager
def make_scheduler(
    loaded: LoadedModel, metrics: Metrics, **overrides: int
) -> Iterator[StepScheduler]:
    values = {
        "max_batch_size": 8,
        "max_batch_total_tokens": 512,
        "max_kv_cache_bytes": 2**30,
        "max_queue_size": 64,
    } | overrides
    scheduler = StepScheduler(loaded.engine, StepLimits(**values), metrics.for_model("m"))
    try:
        yield scheduler
    finally:
        scheduler.close(timeout=30)


def prompt(loaded: LoadedModel, text: str) -> list[int]:
    return loaded.engine.encode(loaded.engine.family.prompt_format.wrap(text))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, {"model": "m", **labels}) or 0.0


@dataclass
class TokenRecorder:
    """A request's tokens as they stream, and an event once `after` of them have come."""

    after: int
    tokens: list[GeneratedToken] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def __call__(self, token: GeneratedToken, _last: bool) -> None:
        self.tokens.append(token)
        if len(self.tokens) == self.after:
            self.started.set()


def test_a_request_joins_a_running_batch_and_finishes_first(loaded, metrics) -> None:
    long_tokens = TokenRecorder(after=5)

    with make_scheduler(loaded, metrics) as scheduler:
        ids = prompt(loaded, "Tell me a long story about a dragon.")
        long = scheduler.submit(ids, LONG, GREEDY, on_token=long_tokens)
        assert long_tokens.started.wait(30)
        short = scheduler.submit(prompt(loaded, "Hi"), SHORT, GREEDY)
        short_generation = short.future.result(timeout=30)
        tokens_when_short_finished = len(long_tokens.tokens)
        long_generation = long.future.result(timeout=60)

    assert len(short_generation.tokens) == SHORT
    assert tokens_when_short_finished < LONG - SHORT
    assert len(long_generation.tokens) == LONG
    alone = loaded.engine.generate([long.request], GREEDY)[0]
    assert long_generation.token_ids == alone.token_ids
    assert sample(metrics, "lamini_step_duration_seconds_count", kind="prefill") >= 2
    assert sample(metrics, "lamini_step_tokens_sum", kind="decode") >= LONG
    assert sample(metrics, "lamini_request_inter_token_latency_seconds_count") >= LONG
    assert sample(metrics, "lamini_running_sequences") == 0


def test_a_long_prompt_is_prefilled_in_chunks_while_the_batch_decodes(loaded, metrics) -> None:
    budget = 9  # one running row leaves 8 prompt tokens per turn
    running_tokens = TokenRecorder(after=3)
    first_token_after: list[int] = []

    def on_joined_token(_token: GeneratedToken, _last: bool) -> None:
        if not first_token_after:
            first_token_after.append(len(running_tokens.tokens))

    with make_scheduler(loaded, metrics, max_batch_total_tokens=budget) as scheduler:
        ids = prompt(loaded, "Tell me a long story about a dragon.")
        running = scheduler.submit(ids, LONG, GREEDY, on_token=running_tokens)
        assert running_tokens.started.wait(30)
        long_ids = prompt(loaded, "Describe the history of every ocean on the planet. " * 3)
        before = len(running_tokens.tokens)
        joined = scheduler.submit(long_ids, SHORT, GREEDY, on_token=on_joined_token)
        generation = joined.future.result(timeout=60)
        running.future.result(timeout=60)

    chunks = -(-len(long_ids) // (budget - 1))
    assert chunks >= 5
    assert first_token_after[0] - before >= chunks - 1  # one decode step per chunk
    assert generation.token_ids == loaded.engine.generate([joined.request], GREEDY)[0].token_ids
    assert sample(metrics, "lamini_step_duration_seconds_count", kind="prefill") >= chunks + 1


def test_a_prefill_batch_takes_prompts_that_pad_little(loaded, metrics) -> None:
    """A short prompt, a long one and two more short ones wait together. Within the token
    budget all four would fit if padding were free, but the long one would pad every short
    row to its length: the three short ones are prefilled together (the later two passing the
    long one) and the long one on its own, so the prefill computes hardly more tokens than the
    prompts hold."""
    shorts = [prompt(loaded, text) for text in ("Hi", "Name a colour.", "What is 2+2?")]
    long_ids = prompt(loaded, "Describe the history of every ocean on the planet. " * 3)
    queued = [shorts[0], long_ids, *shorts[1:]]
    budget = sum(map(len, queued)) + 10
    assert 4 * len(long_ids) > budget
    release = threading.Event()

    with make_scheduler(loaded, metrics, max_batch_total_tokens=budget) as scheduler:
        held = scheduler.call(lambda: release.wait(30))  # the worker waits while all queue
        tickets = [scheduler.submit(ids, SHORT, GREEDY) for ids in queued]
        release.set()
        held.result(timeout=30)
        for ticket in tickets:
            ticket.future.result(timeout=60)

    assert sample(metrics, "lamini_step_duration_seconds_count", kind="prefill") == 2
    computed = sample(metrics, "lamini_step_tokens_sum", kind="prefill")
    assert computed <= sum(map(len, queued)) + 3 * (max(map(len, shorts)) - min(map(len, shorts)))


def test_a_long_t5_input_is_encoded_a_layer_a_turn_while_the_batch_decodes(t5, metrics) -> None:
    """A budget of less than a layer's share of the input: each turn runs one encoder layer,
    and the running row decodes between them."""
    running_tokens = TokenRecorder(after=3)
    first_token_after: list[int] = []

    def on_joined_token(_token: GeneratedToken, _last: bool) -> None:
        if not first_token_after:
            first_token_after.append(len(running_tokens.tokens))

    with make_scheduler(t5, metrics, max_batch_total_tokens=9) as scheduler:
        ids = prompt(t5, "Hi")  # encoded in one turn
        running = scheduler.submit(
            ids, LONG, SamplingParams(min_new_tokens=LONG), on_token=running_tokens
        )
        assert running_tokens.started.wait(30)
        long_ids = prompt(t5, "Describe the history of every ocean on the planet. " * 3)
        before = len(running_tokens.tokens)
        joined = scheduler.submit(long_ids, SHORT, GREEDY, on_token=on_joined_token)
        generation = joined.future.result(timeout=60)
        running.future.result(timeout=60)

    depth = t5.engine.model.config.num_layers
    assert len(ids) <= 9  # the running input is encoded in one turn
    assert 8 * depth < len(long_ids)  # 8 columns a turn (9 less the running row) pay for less
    # than one layer of the long input: at least one layer runs
    assert sample(metrics, "lamini_step_duration_seconds_count", kind="prefill") == 1 + depth
    assert first_token_after[0] - before >= depth - 1  # a decode step after each layer's turn
    assert generation.token_ids == t5.engine.generate([joined.request], GREEDY)[0].token_ids


def test_t5_inputs_count_their_first_token_in_the_turn_they_join(t5, metrics) -> None:
    """A T5 input's first token is decoded in the turn it joins, so it counts against that
    turn's budget beside its encoder tokens: four equal inputs with room for their encoder
    tokens and three first tokens are prefilled as three, then one."""
    ids = prompt(t5, "Name a colour.")
    release = threading.Event()

    with make_scheduler(t5, metrics, max_batch_total_tokens=4 * len(ids) + 3) as scheduler:
        held = scheduler.call(lambda: release.wait(30))  # the worker waits while all queue
        tickets = [scheduler.submit(ids, SHORT, GREEDY) for _ in range(4)]
        release.set()
        held.result(timeout=30)
        for ticket in tickets:
            ticket.future.result(timeout=60)

    assert sample(metrics, "lamini_step_duration_seconds_count", kind="prefill") == 2
    assert sample(metrics, "lamini_step_tokens_sum", kind="prefill") == 4 * len(ids)


def test_a_prompt_found_in_the_prefix_cache_counts_only_what_it_computes(
    loaded_with_prefix_cache, metrics
) -> None:
    """A long prompt is prefilled in chunks of the token budget; sent again, it is found in
    the prefix cache and its prefill computes one token in one turn, with the same tokens."""
    loaded, budget = loaded_with_prefix_cache, 10
    long_ids = prompt(loaded, "Describe the history of every ocean on the planet. " * 3)
    chunks = -(-len(long_ids) // budget)

    with make_scheduler(loaded, metrics, max_batch_total_tokens=budget) as scheduler:
        first = scheduler.submit(long_ids, SHORT, GREEDY).future.result(timeout=60)
        again = scheduler.submit(long_ids, SHORT, GREEDY).future.result(timeout=60)

    assert again.token_ids == first.token_ids
    assert sample(metrics, "lamini_step_duration_seconds_count", kind="prefill") == chunks + 1
    assert sample(metrics, "lamini_step_tokens_sum", kind="prefill") == len(long_ids) + 1
    assert sample(metrics, "lamini_prefix_cache_hits_total") == len(long_ids) - 1
    assert sample(metrics, "lamini_prefix_cache_queries_total") == 2 * len(long_ids)
    assert 0 < sample(metrics, "lamini_prefix_cache_usage_ratio") < 1


def test_the_kv_budget_makes_requests_wait_and_none_is_lost(loaded, metrics) -> None:
    engine = loaded.engine
    prompts = [prompt(loaded, text) for text in ("Hi", "What is 2+2?", "Name a color.")]
    one_at_a_time = max(
        engine.peak_cache_bytes([t]) for t in [EngineRequest(p, max_new_tokens=8) for p in prompts]
    )
    most_running = []

    def watch(_token: GeneratedToken, _last: bool) -> None:
        most_running.append(engine.running)

    with make_scheduler(loaded, metrics, max_kv_cache_bytes=one_at_a_time) as scheduler:
        tickets = [scheduler.submit(p, 8, GREEDY, on_token=watch) for p in prompts]
        generations = [t.future.result(timeout=60) for t in tickets]
        too_big = prompt(loaded, "Write a long essay about everything. " * 3)
        with pytest.raises(InvalidRequestError, match="KV cache"):
            scheduler.submit(too_big, 200, GREEDY)

    assert [len(g.tokens) for g in generations] == [8, 8, 8]
    assert max(most_running) == 1
    assert 0 <= sample(metrics, "lamini_kv_cache_usage_ratio") <= 1


def test_batch_size_and_queue_limits(loaded, metrics) -> None:
    ids = prompt(loaded, "Hi")
    most_running = []

    def watch(_token: GeneratedToken, _last: bool) -> None:
        most_running.append(loaded.engine.running)

    with make_scheduler(loaded, metrics, max_batch_size=2, max_queue_size=3) as scheduler:
        first = [scheduler.submit(ids, 30, GREEDY, on_token=watch) for _ in range(2)]
        while scheduler.queue_size:  # both must have joined before the queue fills
            threading.Event().wait(0.01)
        queued = [scheduler.submit(ids, 5, GREEDY, on_token=watch) for _ in range(3)]
        with pytest.raises(OverloadedError):
            scheduler.submit(ids, 5, GREEDY)
        results = [t.future.result(timeout=60) for t in first + queued]

    assert max(most_running) == 2
    assert [len(g.tokens) for g in results] == [30, 30, 5, 5, 5]
    assert sample(metrics, "lamini_request_rejected_total", reason="queue_full") == 1


def test_cancel_frees_the_row_and_close_answers_everyone(loaded, metrics) -> None:
    ids = prompt(loaded, "Tell me a story.")
    running = threading.Event()
    with make_scheduler(loaded, metrics, max_batch_size=1) as scheduler:
        victim = scheduler.submit(ids, 200, GREEDY, on_token=lambda *_: running.set())
        waiting = scheduler.submit(ids, 4, GREEDY)
        assert running.wait(30)
        scheduler.cancel(victim)
        assert victim.future.result(timeout=30).finish_reason is FinishReason.CANCELLED
        assert len(waiting.future.result(timeout=30).tokens) == 4
        second_running = threading.Event()
        left_running = scheduler.submit(ids, 500, GREEDY, on_token=lambda *_: second_running.set())
        assert second_running.wait(30)
        queued = scheduler.submit(ids, 5, GREEDY)
        scheduler.close(timeout=30)
        with pytest.raises(UnavailableError):
            scheduler.submit(ids, 5, GREEDY)

    with pytest.raises(CancelledError):
        queued.future.result(timeout=5)
    assert left_running.future.result(timeout=5).finish_reason is FinishReason.CANCELLED


def test_calls_run_on_the_scheduler_thread_between_steps(loaded, metrics) -> None:
    running_tokens = TokenRecorder(after=3)
    stepping_threads: set[str] = set()

    def on_token(token: GeneratedToken, last: bool) -> None:
        stepping_threads.add(threading.current_thread().name)
        running_tokens(token, last)

    def where() -> tuple[str, int]:
        return threading.current_thread().name, len(running_tokens.tokens)

    def fails() -> None:
        raise ValueError("the caller's own error")

    with make_scheduler(loaded, metrics) as scheduler:
        ids = prompt(loaded, "Tell me a story.")
        running = scheduler.submit(ids, LONG, GREEDY, on_token=on_token)
        assert running_tokens.started.wait(30)
        thread_name, tokens_before = scheduler.call(where).result(timeout=30)
        with pytest.raises(ValueError, match="own error"):
            scheduler.call(fails).result(timeout=30)
        generation = running.future.result(timeout=60)
        idle_thread_name, _ = scheduler.call(where).result(timeout=30)  # nothing running
        scheduler.close(timeout=30)
        with pytest.raises(UnavailableError):
            scheduler.call(where)

    assert stepping_threads == {thread_name} == {idle_thread_name}
    assert thread_name != threading.current_thread().name
    assert 3 <= tokens_before < LONG
    assert len(generation.tokens) == LONG
    assert generation.token_ids == loaded.engine.generate([running.request], GREEDY)[0].token_ids


def test_the_running_batch_is_wider_than_a_window_batch_unless_set() -> None:
    """Unset, `max_batch_size` is 128 running sequences here and 32 in a window batch
    (`RUNNING_SEQUENCES`, `WINDOW_BATCH_SIZE`); set, it is both."""
    assert scheduler_limits(Settings()).max_batch_size == RUNNING_SEQUENCES == 128
    assert batch_limits(Settings()).max_batch_size == WINDOW_BATCH_SIZE == 32
    assert scheduler_limits(Settings(max_batch_size=5)).max_batch_size == 5
    assert batch_limits(Settings(max_batch_size=5)).max_batch_size == 5
