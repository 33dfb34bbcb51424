"""Iteration-level scheduling: requests join and leave the running batch at every step.

One worker thread owns a `ContinuousEngine`. Each turn of its loop it lets waiting requests
join, computes a chunk of their prefill (for T5 a few layers of the encoder pass), then decodes
one token for every running sequence. Joining prompts get their first token as soon as their
prefill is complete (T5 inputs: from that turn's decode step, which they join) and decode with
the others from then on. A sequence that is finished or cancelled leaves the batch, and frees
its cache, right after the step that ended it; each token streams the moment its step ends. So
a request waits for the turn in progress plus its own prefill, instead of for a whole batch.

Who joins is decided like TGI's router does it, oldest first (so nothing starves), one prefill
batch at a time:
- `max_batch_size` sequences at most run together;
- `max_batch_total_tokens` bounds the tokens one turn computes, prefill and decode together:
  newcomers join while their prompts fit it (the oldest always may), counted as computed: a
  prefill batch is padded to its longest prompt, so one 400-token prompt beside three of 40
  computes 1600 tokens, not 520. A prompt that would pad the batch past the budget or past
  `MAX_PADDING` computed tokens per real one waits, and younger prompts that fit may pass
  it; it joins at the latest when it is the oldest. A prompt's tokens in the prefix cache
  are not computed, and do not count; a T5 input's first token, decoded in the turn it joins
  (`first_token_from_step`), does. (The benchmark's prompts run from 37 to
  438 GPT-2 tokens: 32 clients' prefills computed 1.32 tokens per prompt token when only
  real tokens counted, 1.16 this way.) A decoder-only prefill bigger than what is left of the
  budget is computed a chunk of columns per turn (chunked prefill), so
  the running batch never waits for more than that budget's worth of prompt tokens per step;
  an encoder pass reads its input both ways and is split by layers instead, as many a turn as
  the budget pays for (a layer over the inputs counts as that share of their tokens);
- `max_kv_cache_bytes` bounds the KV cache: a request joins only if the cache the batch could
  ever reach with it (every row as long as the longest one can grow) fits. When it does not,
  requests wait for sequences to leave; one that could never fit is refused at submit.
Past `max_queue_size` waiting requests, submit raises `OverloadedError` (429) as the batcher does.

The worker thread is the only one that computes with the engine while it serves: anything else
(prompt scoring) is handed to it with `call` and runs between two turns, so the process keeps
one OpenMP team (`app/engines/stepwise/threads.py` measures what a second one costs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.serving.batching import Ticket, TicketQueue
from app.serving.errors import InvalidRequestError, UnavailableError
from app.serving.metrics import ModelMetrics
from app.settings import Settings

if TYPE_CHECKING:  # the engine pulls in torch, which a CTranslate2-only image lacks
    from app.engines.stepwise.engine import ContinuousEngine

logger = logging.getLogger(__name__)

MAX_PADDING = 1.25  # a prefill batch computes at most this many tokens per real prompt token
# `max_batch_size` unless set: the most sequences running together. Measured (full
# LaMini-GPT-124M twin, int8, 2-core AVX512 AMD EPYC, the benchmark's open loop at 6 req/s,
# `max_kv_cache_mb` 4096): TTFT p99 1.65 s with 32 (newcomers wait for a row to free), 1.91 s
# with 64, 0.31 s with 96, 0.71 s with 128 (p50 0.09, 0.11, 0.08, 0.08 s; one run each, 80
# requests); at 2 and 4 req/s all alike. A wider batch makes each step slower but not the
# tokens dearer (batch 32 / 64 decode steps: ~52 / ~105 ms), so it costs inter-token latency
# when more sequences run, not throughput.
RUNNING_SEQUENCES = 128


@dataclass(frozen=True)
class StepLimits:
    """What one step may compute and how much KV cache the batch may hold."""

    max_batch_size: int
    max_batch_total_tokens: int
    max_kv_cache_bytes: int
    max_queue_size: int


class StepScheduler(TicketQueue):
    """Queues requests for one continuous engine and runs them in one ever-changing batch."""

    def __init__(self, engine: ContinuousEngine, limits: StepLimits, metrics: ModelMetrics) -> None:
        super().__init__(limits.max_queue_size, metrics, "scheduler")
        self._engine = engine
        self.limits = limits
        self._running: list[Ticket] = []
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._thread.start()

    def call(self, function: Callable[[], Any]) -> Future[Any]:
        """Run `function` on the engine's thread between two turns; its result or error."""
        future: Future[Any] = Future()
        with self._condition:
            if self._closed:
                raise UnavailableError("the server is shutting down; retry on another replica")
            self._calls.append((function, future))
            self._condition.notify()
        return future

    def _check(self, ticket: Ticket) -> None:
        """A request that could never fit the KV-cache budget is refused (400), not queued."""
        needed = self._engine.peak_cache_bytes([ticket.request])
        if needed > self.limits.max_kv_cache_bytes:
            raise InvalidRequestError(
                f"this request needs up to {needed / 2**20:.0f} MiB of KV cache, more than the "
                f"{self.limits.max_kv_cache_bytes / 2**20:.0f} MiB budget (max_kv_cache_mb); "
                "ask for fewer new tokens or send a shorter input"
            )

    # --- worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self._engine.compute_here()
        while (joining := self._next_joining()) is not None:
            self._run_calls()
            try:
                if joining:
                    self._begin(joining)
                if self._engine.prefilling:
                    self._prefill()
                if self._engine.running:
                    self._decode()
            except Exception as exc:
                logger.exception("the engine failed with %d sequences", len(self._running))
                self._fail_running(exc)
            self._running = [t for t in self._running if not t.future.done()]
            self._observe_batch()
        self._engine.abort()
        self._run_calls()

    def _run_calls(self) -> None:
        """Run the calls handed over since the last turn (after close: refuse them)."""
        with self._condition:
            calls, self._calls = self._calls, []
        for function, future in calls:
            if self._closed:
                future.set_exception(UnavailableError("the server is shutting down"))
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(function())
                except Exception as exc:  # the caller's error, raised where it waits
                    future.set_exception(exc)

    def _next_joining(self) -> list[Ticket] | None:
        """The requests that join at this turn (maybe none); blocks while there is nothing to
        do; None once closed."""
        with self._condition:
            while not (self._queue or self._busy or self._calls or self._closed):
                self._condition.wait()
            if self._closed:
                return None
            joining = self._select()
            for ticket in joining:
                self._queue.remove(ticket)
            self._metrics.set_queue_size(len(self._queue))
        now = time.monotonic()
        started = [t for t in joining if t.future.set_running_or_notify_cancel()]
        for ticket in started:
            ticket.started_at = now
            self._metrics.observe_queue_wait(now - ticket.enqueued_at)
        return started

    def _select(self) -> list[Ticket]:
        """The oldest waiting requests that fit this step's token budget, the batch size and
        the KV-cache budget (lock held)."""
        limits, engine = self.limits, self._engine
        if engine.prefilling:
            return []
        room = limits.max_batch_size - engine.running
        tokens = limits.max_batch_total_tokens - engine.running
        requests = [t.request for t in self._running]
        joining: list[Ticket] = []
        widest = real = 0
        for ticket in self._queue:
            if len(joining) >= room:
                break
            length = len(ticket.request.prompt_ids) - engine.cached_prefix(ticket.request)
            wider = max(widest, length)
            padded = (len(joining) + 1) * wider
            computed = padded + (len(joining) + 1 if engine.first_token_from_step else 0)
            if joining and (computed > tokens or padded > MAX_PADDING * (real + length)):
                continue  # a prompt further back may still fit beside the oldest
            if engine.peak_cache_bytes([*requests, ticket.request]) > limits.max_kv_cache_bytes:
                break
            joining.append(ticket)
            requests.append(ticket.request)
            widest, real = wider, real + length
        return joining

    @property
    def _busy(self) -> bool:
        return self._engine.running > 0 or self._engine.prefilling

    def _begin(self, joining: list[Ticket]) -> None:
        self._running += joining
        cached = self._engine.begin(
            [self._engine.track(t.request) for t in joining], [t.sampling for t in joining]
        )
        if self._engine.prefixes is not None:
            prompts = sum(len(t.request.prompt_ids) for t in joining)
            self._metrics.observe_prefix_cache(prompts, cached)

    def _prefill(self) -> None:
        started = time.perf_counter()
        budget = self.limits.max_batch_total_tokens - self._engine.running
        tokens = self._engine.prefill(budget)
        self._metrics.observe_step("prefill", time.perf_counter() - started, tokens)

    def _decode(self) -> None:
        started = time.perf_counter()
        rows = self._engine.step()
        if rows:
            self._metrics.observe_step("decode", time.perf_counter() - started, rows)

    def _fail_running(self, error: Exception) -> None:
        for ticket in self._running:
            if not ticket.future.done():
                ticket.future.set_exception(error)
        self._engine.abort()

    def _observe_batch(self) -> None:
        self._metrics.set_running(self._engine.running)
        self._metrics.set_kv_cache_usage(
            self._engine.cache_bytes() / self.limits.max_kv_cache_bytes
        )
        prefixes = self._engine.prefixes
        if prefixes is not None:
            self._metrics.set_prefix_cache_usage(prefixes.bytes / prefixes.budget_bytes)


def scheduler_limits(settings: Settings) -> StepLimits:
    return StepLimits(
        max_batch_size=settings.max_batch_size or RUNNING_SEQUENCES,
        max_batch_total_tokens=settings.max_batch_total_tokens,
        max_kv_cache_bytes=int(settings.max_kv_cache_mb * 2**20),
        max_queue_size=settings.max_queue_size,
    )
