"""Closed-loop HTTP load: `concurrency` async clients, each sending its next request as soon as
its previous one is answered (the way a pool of callers behaves, unlike an open-loop rate).

Systems plug in a `RequestSender` that performs one request and reports its latency, time to
first token (streaming) and generated-token count; this module only schedules and times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.options import SystemName
from benchmarks.results import Measurement


@dataclass(frozen=True)
class CallResult:
    """One answered request as the client saw it."""

    latency_s: float
    tokens: int
    ttft_s: float | None = None
    error: str | None = None


RequestSender = Callable[[httpx.AsyncClient, str], Awaitable[CallResult]]


def json_sender(
    url: str, body: Callable[[str], dict[str, object]], tokens: Callable[[Any], int]
) -> RequestSender:
    """A sender of one non-streamed request per instruction, timed end to end: `body` makes
    the JSON body, `tokens` reads the generated-token count from the answer; anything but 200
    is an error result."""

    async def send(client: httpx.AsyncClient, instruction: str) -> CallResult:
        started = time.perf_counter()
        response = await client.post(url, json=body(instruction))
        latency = time.perf_counter() - started
        if response.status_code != 200:
            return CallResult(latency, 0, error=f"HTTP {response.status_code}: {response.text}")
        return CallResult(latency, tokens(response.json()))

    return send


@dataclass
class LoadResult:
    wall_s: float = 0.0
    calls: list[CallResult] = field(default_factory=list)

    @property
    def ok_calls(self) -> list[CallResult]:
        return [call for call in self.calls if call.error is None]

    @property
    def errors(self) -> list[str]:
        return [call.error for call in self.calls if call.error is not None]


async def _safe_send(send: RequestSender, client: httpx.AsyncClient, text: str) -> CallResult:
    started = time.perf_counter()
    try:
        return await send(client, text)
    except httpx.HTTPError as exc:
        return CallResult(time.perf_counter() - started, 0, error=f"{type(exc).__name__}: {exc}")


async def _closed_loop(
    send: RequestSender,
    inputs: list[str],
    concurrency: int,
    warmup: list[str],
    time_budget_s: float,
    timeout_s: float,
) -> LoadResult:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        await asyncio.gather(*(_safe_send(send, client, text) for text in warmup))
        result = LoadResult()
        queue = iter(inputs)
        started = time.perf_counter()
        deadline = started + time_budget_s

        async def client_loop() -> None:
            for text in queue:
                result.calls.append(await _safe_send(send, client, text))
                if time.perf_counter() > deadline:
                    return

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def run_closed_loop(
    send: RequestSender,
    inputs: list[str],
    concurrency: int,
    *,
    warmup: list[str],
    time_budget_s: float,
    timeout_s: float = 600.0,
) -> LoadResult:
    """Send `inputs` with `concurrency` closed-loop clients after an untimed `warmup` burst."""
    return asyncio.run(_closed_loop(send, inputs, concurrency, warmup, time_budget_s, timeout_s))


def to_measurement(
    load: LoadResult,
    *,
    system: SystemName,
    quantization: str,
    max_new_tokens: int,
    concurrency: int,
    streaming: bool = False,
) -> Measurement:
    """Figures over the answered requests; failed ones are counted and the first is quoted."""
    calls = load.ok_calls
    errors = load.errors
    return Measurement(
        system=system,
        variant=f"c={concurrency}" + (" stream" if streaming else ""),
        quantization=quantization,
        max_new_tokens=max_new_tokens,
        concurrency=concurrency,
        streaming=streaming,
        wall_s=load.wall_s,
        generated_tokens=sum(call.tokens for call in calls),
        latencies_s=[call.latency_s for call in calls],
        ttft_s=[call.ttft_s for call in calls if call.ttft_s is not None],
        short_outputs=sum(1 for call in calls if call.tokens < max_new_tokens),
        errors=len(errors),
        first_error=errors[0] if errors else None,
    )
