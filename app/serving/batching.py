"""Dynamic batching: one queue and one worker thread per model.

Requests wait in a queue. When the engine is free, the worker lets the batch fill while
requests keep arriving: it starts once `max_batch_size` requests wait, once none has arrived for
`batch_quiet_ms`, or at the latest `max_batch_wait_ms` after the engine became free (or after the
oldest request arrived, if later). Counting from the moment the engine frees up matters: the
clients answered by the last batch send their next requests within tens of milliseconds, and a
batch started before they arrive splits the load into two half-size batches that alternate for
good (measured on 32 closed-loop clients: batches of ~16 instead of 32). The batch is the oldest
request plus the queued ones with the same sampling parameters whose prompts are closest in
length to it (less padding), within `max_batch_size` and `max_batch_tokens`. The oldest request
always goes first, so nothing starves. Only the worker thread touches the engine.

Cancellation is cooperative: a queued request is simply removed; a running one has its flag
set and the engine stops producing its tokens at the next step.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from app.engines.base import (
    Engine,
    EngineRequest,
    GeneratedToken,
    Generation,
    SamplingParams,
    TokenCallback,
)
from app.engines.grammar import TokenConstraint
from app.serving.errors import OverloadedError, UnavailableError
from app.serving.metrics import ModelMetrics
from app.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchLimits:
    """How big batches may grow and how long they may wait to grow."""

    max_batch_size: int
    max_batch_wait_s: float
    batch_quiet_s: float
    max_batch_tokens: int
    max_queue_size: int


WINDOW_BATCH_SIZE = 32  # `max_batch_size` unless set: CTranslate2's and ONNX Runtime's batches


def batch_limits(settings: Settings) -> BatchLimits:
    return BatchLimits(
        max_batch_size=settings.max_batch_size or WINDOW_BATCH_SIZE,
        max_batch_wait_s=settings.max_batch_wait_ms / 1000,
        batch_quiet_s=settings.batch_quiet_ms / 1000,
        max_batch_tokens=settings.max_batch_tokens,
        max_queue_size=settings.max_queue_size,
    )


@dataclass(eq=False)
class Ticket:
    """One submitted request: the engine request, its batch key and where its result goes."""

    request: EngineRequest
    sampling: SamplingParams
    enqueued_at: float
    future: Future[Generation] = field(default_factory=Future)
    started_at: float | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def resolve(self, generation: Generation) -> None:
        """Hand the result over (once): as soon as the sequence ends, or when its batch does."""
        if not self.future.done():
            self.future.set_result(generation)

    @property
    def cost(self) -> int:
        """Tokens this request may occupy: what `max_batch_tokens` limits."""
        return len(self.request.prompt_ids) + self.request.max_new_tokens


class InterTokenClock:
    """Wraps a request's token callback to observe the time between its tokens."""

    def __init__(self, on_token: TokenCallback | None, metrics: ModelMetrics) -> None:
        self._on_token = on_token
        self._metrics = metrics
        self._last: float | None = None

    def __call__(self, token: GeneratedToken, last: bool) -> None:
        now = time.monotonic()
        if self._last is not None:
            self._metrics.observe_inter_token(now - self._last)
        self._last = now
        if self._on_token is not None:
            self._on_token(token, last)


def new_ticket(
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: SamplingParams,
    stop: tuple[str, ...],
    on_token: TokenCallback | None,
    constraint: TokenConstraint | None = None,
) -> Ticket:
    """A ticket whose engine request polls the ticket's cancel flag and resolves it when done."""
    cancelled = threading.Event()
    request = EngineRequest(
        prompt_ids=list(prompt_ids),
        max_new_tokens=max_new_tokens,
        stop=stop,
        on_token=on_token,
        constraint=constraint,
        is_cancelled=cancelled.is_set,
    )
    ticket = Ticket(request, sampling, time.monotonic(), _cancelled=cancelled)
    request.on_finish = ticket.resolve
    return ticket


def refuse_when_full(closed: bool, queued: int, max_queue_size: int, metrics: ModelMetrics) -> None:
    """Raise why a new request cannot be queued: shutting down (503) or a full queue (429)."""
    if closed:
        raise UnavailableError("the server is shutting down; retry on another replica")
    if queued >= max_queue_size:
        metrics.count_rejected("queue_full")
        raise OverloadedError(
            f"model is overloaded: {queued} requests are already waiting "
            f"(max_queue_size); retry later"
        )


class TicketQueue(ABC):
    """The waiting side every scheduler shares: a queue of tickets with a size limit (429
    beyond it), cancellation of queued tickets, and shutdown; one worker thread runs `_run`."""

    def __init__(self, max_queue_size: int, metrics: ModelMetrics, worker_name: str) -> None:
        self._max_queue_size = max_queue_size
        self._metrics = metrics
        self._queue: list[Ticket] = []
        self._condition = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"{worker_name}-{metrics.model}", daemon=True
        )

    @property
    def queue_size(self) -> int:
        with self._condition:
            return len(self._queue)

    def submit(
        self,
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        sampling: SamplingParams,
        stop: tuple[str, ...] = (),
        on_token: TokenCallback | None = None,
        constraint: TokenConstraint | None = None,
    ) -> Ticket:
        """Queue a request; raise `OverloadedError` when the queue is full."""
        ticket = new_ticket(
            prompt_ids, max_new_tokens, sampling, stop, self._observed(on_token), constraint
        )
        self._check(ticket)
        with self._condition:
            refuse_when_full(self._closed, len(self._queue), self._max_queue_size, self._metrics)
            self._queue.append(ticket)
            self._metrics.set_queue_size(len(self._queue))
            self._condition.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop working on `ticket`: drop it if still queued, else stop its generation."""
        ticket._cancelled.set()
        with self._condition:
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._metrics.set_queue_size(len(self._queue))
                ticket.future.cancel()

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, cancel queued and running ones, and stop the worker."""
        with self._condition:
            self._closed = True
            abandoned, self._queue = self._queue, []
            self._metrics.set_queue_size(0)
            self._condition.notify_all()
        for ticket in abandoned:
            ticket._cancelled.set()
            ticket.future.cancel()
        self._thread.join(timeout)

    def _observed(self, on_token: TokenCallback | None) -> TokenCallback:
        """The token callback the engine calls: the request's, timing the gaps between tokens."""
        return InterTokenClock(on_token, self._metrics)

    def _check(self, ticket: Ticket) -> None:  # noqa: B027 - optional hook
        """Raise when `ticket` can never run here (before it is queued)."""

    @abstractmethod
    def _run(self) -> None:
        """The worker thread: take tickets off the queue and run them until closed."""


class Batcher(TicketQueue):
    """Queues requests for one engine and runs them in dynamic batches on its own thread."""

    def __init__(self, engine: Engine, limits: BatchLimits, metrics: ModelMetrics) -> None:
        super().__init__(limits.max_queue_size, metrics, "batcher")
        self._engine = engine
        self.limits = limits
        self._engine_free_since = time.monotonic()
        self._thread.start()

    # --- worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._execute(batch)
            self._engine_free_since = time.monotonic()

    def _next_batch(self) -> list[Ticket] | None:
        """Block until a batch is ready; None once closed."""
        with self._condition:
            while True:
                while not self._queue and not self._closed:
                    self._condition.wait()
                if self._closed:
                    return None
                self._let_batch_fill()
                if self._closed:
                    return None
                if self._queue:  # else: all were cancelled while the batch filled
                    break
            batch = self._select(self._queue)
            for ticket in batch:
                self._queue.remove(ticket)
            self._metrics.set_queue_size(len(self._queue))
            return batch

    def _let_batch_fill(self) -> None:
        """Wait (lock held) while requests keep coming, within the limits above."""
        limits = self.limits
        latest = max(self._queue[0].enqueued_at, self._engine_free_since) + limits.max_batch_wait_s
        while self._queue and len(self._queue) < limits.max_batch_size and not self._closed:
            last_arrival = max(self._queue[-1].enqueued_at, self._engine_free_since)
            remaining = min(latest, last_arrival + limits.batch_quiet_s) - time.monotonic()
            if remaining <= 0:
                return
            self._condition.wait(remaining)

    def _select(self, queue: list[Ticket]) -> list[Ticket]:
        """The oldest request plus the compatible ones closest to it in prompt length."""
        oldest = queue[0]
        length = len(oldest.request.prompt_ids)
        compatible = [t for t in queue[1:] if t.sampling == oldest.sampling]
        compatible.sort(key=lambda t: abs(len(t.request.prompt_ids) - length))
        batch, tokens = [oldest], oldest.cost
        for ticket in compatible:
            if len(batch) >= self.limits.max_batch_size:
                break
            if tokens + ticket.cost <= self.limits.max_batch_tokens:
                batch.append(ticket)
                tokens += ticket.cost
        batch.sort(key=lambda t: len(t.request.prompt_ids))
        return batch

    def _execute(self, batch: list[Ticket]) -> None:
        started = time.monotonic()
        running = [t for t in batch if t.future.set_running_or_notify_cancel()]
        if not running:
            return
        for ticket in running:
            ticket.started_at = started
            self._metrics.observe_queue_wait(started - ticket.enqueued_at)
        self._metrics.observe_batch(len(running))
        try:
            generations = self._engine.generate([t.request for t in running], running[0].sampling)
        except Exception as exc:
            logger.exception("engine failed on a batch of %d requests", len(running))
            for ticket in running:
                ticket.future.set_exception(exc)
            return
        for ticket, generation in zip(running, generations, strict=True):
            ticket.resolve(generation)
