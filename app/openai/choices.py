"""Running the choices of one OpenAI request: `n` per prompt, all at once, through the batcher.

A request with several prompts or `n > 1` becomes one generation per choice, submitted
together so the batcher can run them in one batch. With a seed, choice `k` samples with
`seed + k` (modulo 2**32 - 1): choices differ from each other, and the same request gives the
same choices again.

Streams are started before the HTTP response is: a full queue or an engine that cannot start
is still answered with its own status (429, 503) instead of a broken event stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from app.http.requests import client_gone
from app.serving.preparation import GenerationOptions, PreparedRequest
from app.serving.served_model import Answer, ServedModel, StreamEvent


@dataclass(frozen=True)
class Choice:
    """One choice to generate: its index in the response and its prepared request."""

    index: int
    prepared: PreparedRequest


@dataclass(frozen=True)
class ChoicePlan:
    """Every choice of a request, and the prompt tokens the request is billed for."""

    choices: list[Choice]
    prompt_tokens: int


def _with_seed_offset(prepared: PreparedRequest, offset: int) -> PreparedRequest:
    seed = prepared.sampling.seed
    if seed is None:
        return prepared
    sampling = dataclasses.replace(prepared.sampling, seed=seed + offset)
    return dataclasses.replace(prepared, sampling=sampling)


async def plan_choices(
    served: ServedModel, prompts: Sequence[str], options: GenerationOptions, n: int
) -> ChoicePlan:
    """Prepare each prompt once (format, tokenise, check limits) and fan it out to `n` choices;
    at most `max_client_batch_size` choices in all.

    Choice indexes follow OpenAI: prompt `i`'s choices are `i * n` to `i * n + n - 1`.
    """
    choices = []
    prompt_tokens = 0
    for prepared in await served.prepare_all(prompts, options, copies=n):
        prompt_tokens += len(prepared.prompt_ids)
        choices += [Choice(len(choices) + k, _with_seed_offset(prepared, k)) for k in range(n)]
    return ChoicePlan(choices, prompt_tokens)


async def complete_choices(served: ServedModel, plan: ChoicePlan, request: Request) -> list[Answer]:
    """Generate every choice; the first failure or a disconnect cancels the others."""
    return await served.complete_all([c.prepared for c in plan.choices], client_gone(request))


_FINISHED = object()


class ChoiceStreams:
    """The token streams of every choice, merged into one sequence of `(index, event)`."""

    def __init__(self, served: ServedModel, plan: ChoicePlan) -> None:
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._started: list[tuple[int, Any]] = []
        self._tasks = [asyncio.ensure_future(self._pump(served, choice)) for choice in plan.choices]

    async def _pump(self, served: ServedModel, choice: Choice) -> None:
        """Forward one choice's events; queueing it happens here, so a full queue is reported
        like any other failure (and cancelling the task cancels the generation)."""
        index = choice.index
        try:
            async for event in served.stream(choice.prepared):
                await self._queue.put((index, event))
        except Exception as exc:  # handed to the consumer, who decides how to report it
            await self._queue.put((index, exc))
        else:
            await self._queue.put((index, _FINISHED))

    async def start(self) -> None:
        """Wait until every choice produced its first token; raise the first failure instead."""
        waiting = {index for index in range(len(self._tasks))}
        while waiting:
            index, item = await self._queue.get()
            self._started.append((index, item))
            if isinstance(item, Exception):
                await self.close()
                raise item
            waiting.discard(index)

    async def events(self) -> AsyncIterator[tuple[int, StreamEvent]]:
        """Every choice's events as they come; a failure after the start is raised here."""
        running = len(self._tasks)
        buffered = list(self._started)
        self._started.clear()
        while running:
            index, item = buffered.pop(0) if buffered else await self._queue.get()
            if item is _FINISHED:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item

    async def close(self) -> None:
        """Cancel what still runs (a client that left stops costing compute)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def started_streams(served: ServedModel, plan: ChoicePlan) -> ChoiceStreams:
    """Streams for every choice of `plan`, each with its first token already generated."""
    streams = ChoiceStreams(served, plan)
    await streams.start()
    return streams
