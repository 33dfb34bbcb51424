"""The route-agnostic generation layer: from a user's prompt to a tidied answer.

Every HTTP route (TGI's `/generate`, OpenAI's `/v1/completions`, ...) goes through
`ServedModel`: it prepares the prompts (`app/serving/preparation.py`) off the event loop,
submits them to the model's batcher, waits (or streams) while
watching for a client that went away or a timeout, tidies the text and observes the metrics.
Nothing here knows any API's wire format.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.engine_kinds import EngineKind
from app.engines.base import Engine, FinishReason, GeneratedToken, Generation, PromptScoringError
from app.engines.scoring import TokenScore
from app.serving.batching import Batcher, Ticket, batch_limits
from app.serving.errors import (
    ClientDisconnectedError,
    GenerationError,
    InvalidRequestError,
    RequestTimeoutError,
    UnavailableError,
    UnsupportedParameterError,
)
from app.serving.metrics import ModelMetrics
from app.serving.preparation import (
    GenerationOptions,
    PreparationLimits,
    PreparedRequest,
    Prompt,
    RequestPreparer,
)
from app.serving.scheduler import StepScheduler, scheduler_limits
from app.settings import Settings


@dataclass(frozen=True)
class Answer:
    """A finished generation as the user should see it: tidied text, tokens, why it ended."""

    text: str
    tokens: list[GeneratedToken]
    finish_reason: FinishReason
    seed: int | None
    input_tokens: int


@dataclass(frozen=True)
class StreamEvent:
    """One generated token; the last event of a stream also carries the answer."""

    index: int
    token: GeneratedToken
    answer: Answer | None = None


_FINISHED = object()


@dataclass
class _Timing:
    """When the first token of a request appeared (written from the batcher's thread)."""

    first_token_at: float | None = None

    def on_token(self, _token: GeneratedToken, _last: bool) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()


def _queue_for(
    engine: Engine, settings: Settings, metrics: ModelMetrics
) -> Batcher | StepScheduler:
    """Iteration-level scheduling for an engine that steps, dynamic batches for the others."""
    if engine.info.kind is EngineKind.CONTINUOUS:
        return StepScheduler(engine, scheduler_limits(settings), metrics)  # type: ignore[arg-type]
    return Batcher(engine, batch_limits(settings), metrics)


class ServedModel:
    """One loaded model with its batcher: the service's unit of generation."""

    def __init__(
        self, name: str, engine: Engine, settings: Settings, metrics: ModelMetrics
    ) -> None:
        self.name = name
        self.engine = engine
        self.family = engine.family
        self.metrics = metrics
        self.settings = settings
        self.preparer = RequestPreparer(
            engine,
            PreparationLimits(
                max_stop_sequences=settings.max_stop_sequences,
                default_max_new_tokens=settings.default_max_new_tokens,
            ),
        )
        self.batcher = _queue_for(engine, settings, metrics)

    @property
    def max_batch_size(self) -> int:
        """TGI's `/info` field: the most sequences in a window batch, or running together."""
        return self.batcher.limits.max_batch_size

    @property
    def max_batch_total_tokens(self) -> int:
        """TGI's `/info` field: the tokens one batch may hold - a window batch's prompt and new
        tokens, or what one continuous step computes."""
        if isinstance(self.batcher, StepScheduler):
            return self.batcher.limits.max_batch_total_tokens
        return self.batcher.limits.max_batch_tokens

    def close(self) -> None:
        self.batcher.close(timeout=5)
        self.engine.close()

    # --- preparing -----------------------------------------------------------------------------

    async def prepare_all(
        self, prompts: Sequence[Prompt], options: GenerationOptions, copies: int = 1
    ) -> list[PreparedRequest]:
        """Prepare every prompt (concurrently, off the event loop) for `copies` generations each.

        A request may ask for at most `max_client_batch_size` generations in all (prompts times
        copies, OpenAI's `n`), so one client cannot fill the queue alone.
        """
        arrived_at = time.monotonic()
        count, limit = len(prompts) * copies, self.settings.max_client_batch_size
        if count > limit:
            what = f"{len(prompts)} prompt(s)" + (f" x {copies}" if copies > 1 else "")
            raise InvalidRequestError(
                f"this request asks for {count} generations ({what}); at most {limit} are "
                "allowed per request (max_client_batch_size)"
            )
        return list(
            await asyncio.gather(
                *(
                    asyncio.to_thread(self.preparer.prepare, prompt, options, arrived_at)
                    for prompt in prompts
                )
            )
        )

    async def score(self, ids: Sequence[int], top_n: int, param: str) -> list[TokenScore]:
        """Each token's log-probability given the ones before it, with the `top_n` likeliest
        alternatives (OpenAI's `echo` + `logprobs`); off the event loop: beside the batcher
        (a forward pass shares nothing with a running generation), or between two steps on
        the continuous engine's own thread (the one thread that computes with it)."""
        self.check_scoring(param)
        scoring = functools.partial(self.engine.score, list(ids), top_n)
        if isinstance(self.batcher, StepScheduler):
            return await asyncio.wrap_future(self.batcher.call(scoring))
        return await asyncio.to_thread(scoring)

    def check_scoring(self, param: str) -> None:
        """Refuse, before generating anything, a request whose answer needs `score` (`param`
        names the parameter that asks for it)."""
        try:
            self.engine.check_scoring()
        except PromptScoringError as exc:
            raise UnsupportedParameterError(str(exc), param) from None

    # --- generating ----------------------------------------------------------------------------

    def _submit(self, prepared: PreparedRequest, on_token: Any) -> Ticket:
        """Queue the request; it counts as in flight until its generation ends, however it ends
        (so the gauge stays right even for a stream nobody reads)."""
        ticket = self.batcher.submit(
            prepared.prompt_ids,
            prepared.max_new_tokens,
            prepared.sampling,
            stop=prepared.stop,
            on_token=on_token,
            constraint=None
            if prepared.grammar is None
            else self.preparer.new_constraint(prepared.grammar),
        )
        self.metrics.track_in_flight(+1)
        ticket.future.add_done_callback(lambda _: self.metrics.track_in_flight(-1))
        return ticket

    def _deadline(self, prepared: PreparedRequest) -> float:
        return prepared.arrived_at + self.settings.request_timeout_s

    async def complete(
        self, prepared: PreparedRequest, disconnected: asyncio.Future[Any] | None = None
    ) -> Answer:
        """Generate the whole answer; cancel if `disconnected` resolves first or time runs out.

        `disconnected` belongs to the caller (several prompts of one request share it).
        """
        timing = _Timing()
        ticket = self._submit(prepared, timing.on_token)
        result = asyncio.wrap_future(ticket.future)
        waiting = {result} if disconnected is None else {result, disconnected}
        try:
            timeout = max(0.0, self._deadline(prepared) - time.monotonic())
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            self._cancel(ticket, timed_out=False)
            raise
        if result in done:
            return self._finish(prepared, ticket, timing)
        if disconnected in done:
            self._cancel(ticket, timed_out=False)
            raise ClientDisconnectedError
        self._cancel(ticket, timed_out=True)
        raise self._timeout_error()

    async def complete_all(
        self, prepared: Sequence[PreparedRequest], disconnected: Awaitable[Any]
    ) -> list[Answer]:
        """Generate several prompts of one request together (they batch); `disconnected` (the
        client went away) cancels all of them, and so does the first failure."""
        watcher = asyncio.ensure_future(disconnected)
        tasks = [
            asyncio.ensure_future(self.complete(one, asyncio.shield(watcher))) for one in prepared
        ]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in [*tasks, watcher]:
                task.cancel()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)

    def stream(self, prepared: PreparedRequest) -> AsyncIterator[StreamEvent]:
        """Queue the request now (a full queue raises here, before any response is sent) and
        return its events: one per token as the batch produces it, the last one carrying the
        answer. Closing the iterator early (the client went away) cancels the request.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        timing = _Timing()

        def on_token(token: GeneratedToken, last: bool) -> None:
            timing.on_token(token, last)
            loop.call_soon_threadsafe(events.put_nowait, (token, last))

        ticket = self._submit(prepared, on_token)
        ticket.future.add_done_callback(
            lambda _: loop.call_soon_threadsafe(events.put_nowait, _FINISHED)
        )
        return self._events(prepared, ticket, events, timing)

    async def _events(
        self,
        prepared: PreparedRequest,
        ticket: Ticket,
        events: asyncio.Queue[Any],
        timing: _Timing,
    ) -> AsyncIterator[StreamEvent]:
        completed = False
        try:
            # Every token goes out as soon as it exists; the last one waits only for the
            # answer, which the batcher resolves the moment this sequence ends.
            last_token: GeneratedToken | None = None
            index = 1
            while (item := await self._next_event(events, prepared, ticket)) is not _FINISHED:
                token, last = item
                if last:
                    last_token = token
                else:
                    yield StreamEvent(index, token)
                    index += 1
            answer = self._finish(prepared, ticket, timing)
            completed = True
            if last_token is None:
                raise GenerationError("the engine ended the sequence without its last token")
            yield StreamEvent(index, last_token, answer)
        finally:
            if not completed:
                self._cancel(ticket, timed_out=False)

    async def _next_event(
        self, events: asyncio.Queue[Any], prepared: PreparedRequest, ticket: Ticket
    ) -> Any:
        try:
            timeout = max(0.0, self._deadline(prepared) - time.monotonic())
            return await asyncio.wait_for(events.get(), timeout)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            self._cancel(ticket, timed_out=True)
            raise self._timeout_error() from None

    def _cancel(self, ticket: Ticket, timed_out: bool) -> None:
        """Stop an unfinished `ticket` and count why (once)."""
        if ticket.cancelled or ticket.future.done():
            return
        self.batcher.cancel(ticket)
        if timed_out:
            self.metrics.count_rejected("timeout")
        else:
            self.metrics.count_cancelled()

    def _timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"the request did not finish within {self.settings.request_timeout_s:g} s "
            "(request_timeout_s); the server may be overloaded, retry later"
        )

    def _generation(self, ticket: Ticket) -> Generation:
        """The finished ticket's generation, or the error that explains why there is none."""
        if ticket.future.cancelled():
            raise UnavailableError("the request was cancelled because the server is shutting down")
        error = ticket.future.exception()
        if error is not None:
            raise GenerationError(f"generation failed: {error}") from error
        generation = ticket.future.result()
        if generation.finish_reason is FinishReason.CANCELLED:
            raise ClientDisconnectedError
        return generation

    def _finish(self, prepared: PreparedRequest, ticket: Ticket, timing: _Timing) -> Answer:
        generation = self._generation(ticket)
        finished_at = time.monotonic()
        count = len(generation.tokens)
        first = timing.first_token_at
        self.metrics.observe_generation(
            input_tokens=len(prepared.prompt_ids),
            generated_tokens=count,
            time_to_first_token=None if first is None else first - prepared.arrived_at,
            time_per_output_token=(finished_at - first) / (count - 1)
            if first is not None and count > 1
            else None,
        )
        return Answer(
            text=self.family.prompt_format.tidy(generation.text),
            tokens=generation.tokens,
            finish_reason=generation.finish_reason,
            seed=prepared.sampling.seed if prepared.sampling.do_sample else None,
            input_tokens=len(prepared.prompt_ids),
        )
