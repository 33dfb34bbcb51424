"""The open-loop scenario: requests arrive as a Poisson process at a fixed rate, whatever the
server is doing (unlike the closed loop, where a client waits for its answer before sending
again), the way independent users arrive. This is what exposes queueing: a request that arrives
while a batch runs waits for it.

Every system gets the same requests in the same order at the same arrival times (one seeded
schedule, scaled by the rate): the workload's instructions in file order, each with
`max_tokens` = its reference answer's length in GPT-2 tokens (clipped). Requests are streamed
through `/v1/completions` by `completions.CompletionsEndpoint`. The configured rates are always
measured; then the rate rises by a step while TTFT p99 stays within the objective, up to a cap,
to find the highest rate that meets it.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from dataclasses import dataclass

import httpx

from benchmarks.completions import CompletionsEndpoint
from benchmarks.context import BenchContext
from benchmarks.loadgen import RequestSender, run_closed_loop
from benchmarks.openloop_results import OpenLoopRun, RateMeasurement, RequestSample
from benchmarks.servers import ServerProcess
from benchmarks.workload import reference_lengths

_REQUEST_TIMEOUT_S = 600.0
_WARMUP_TOKENS = 16


@dataclass(frozen=True)
class OpenLoopPlan:
    """The requests and their arrival pattern, the same for every system and rate."""

    instructions: list[str]
    max_tokens: list[int]
    unit_gaps: list[float]  # exponential gaps at 1 req/s; divided by the rate

    @classmethod
    def from_context(cls, context: BenchContext) -> OpenLoopPlan:
        options = context.options
        count = options.open_loop_requests
        instructions = context.workload.take(count, wrapped=False)
        references = [
            context.workload.references[i % len(context.workload.references)] for i in range(count)
        ]
        lengths = reference_lengths(
            tuple(references), options.open_loop_min_tokens, options.open_loop_max_tokens
        )
        rng = random.Random(options.open_loop_seed)
        gaps = [0.0, *(rng.expovariate(1.0) for _ in range(count - 1))]
        return cls(instructions, lengths, gaps)

    def arrivals(self, rate: float) -> list[float]:
        """Seconds from the first arrival to each request's arrival at `rate` req/s."""
        offsets, now = [], 0.0
        for gap in self.unit_gaps:
            now += gap / rate
            offsets.append(now)
        return offsets


async def _at_rate(
    endpoint: CompletionsEndpoint, plan: OpenLoopPlan, rate: float, budget_s: float
) -> RateMeasurement:
    count = len(plan.instructions)
    limits = httpx.Limits(max_connections=count + 4, max_keepalive_connections=count)
    async with httpx.AsyncClient(limits=limits, timeout=_REQUEST_TIMEOUT_S) as client:
        started = time.perf_counter()
        tasks: list[asyncio.Task[RequestSample]] = []
        for arrival, instruction, max_tokens in zip(
            plan.arrivals(rate), plan.instructions, plan.max_tokens, strict=True
        ):
            if arrival > budget_s:
                break
            await asyncio.sleep(max(0.0, started + arrival - time.perf_counter()))
            sent = time.perf_counter() - started
            tasks.append(
                asyncio.create_task(endpoint.stream(client, instruction, max_tokens, sent))
            )
        samples = list(await asyncio.gather(*tasks))
    return RateMeasurement(rate=rate, wall_s=time.perf_counter() - started, samples=samples)


def measure_rate(
    endpoint: CompletionsEndpoint, plan: OpenLoopPlan, rate: float, budget_s: float
) -> RateMeasurement:
    """All of the plan's requests at `rate` (those arriving within `budget_s`), streamed."""
    measured = asyncio.run(_at_rate(endpoint, plan, rate, budget_s))
    print(
        f"[bench] open loop {rate:g} req/s: TTFT p50 {measured.ttft_p50_s:.3f}s "
        f"p99 {measured.ttft_p99_s:.3f}s, e2e p99 {measured.e2e_p99_s:.3f}s, "
        f"{measured.tokens_per_s:.1f} tok/s, {measured.requests} requests"
        + (f", {measured.errors} errors" if measured.errors else "")
        + ("" if measured.kept_up else ", fell behind"),
        file=sys.stderr,
        flush=True,
    )
    return measured


def _search_rates(context: BenchContext) -> list[float]:
    """The rates past the configured ones, tried while the objective holds."""
    options = context.options
    rate, rates = max(options.open_loop_rates), []
    while rate + options.open_loop_rate_step <= options.open_loop_max_rate + 1e-9:
        rate = round(rate + options.open_loop_rate_step, 6)
        rates.append(rate)
    return rates


def run_open_loop(
    context: BenchContext,
    endpoint: CompletionsEndpoint,
    *,
    label: str,
    engine: str,
    quantization: str,
) -> OpenLoopRun:
    """The configured rates, then the upward search (after a warm-up burst)."""
    options = context.options
    plan = OpenLoopPlan.from_context(context)
    run = OpenLoopRun(
        label=label,
        engine=engine,
        quantization=quantization,
        ttft_objective_s=options.open_loop_ttft_objective_s,
    )
    warmup = OpenLoopPlan(context.warmup(4, wrapped=False), [_WARMUP_TOKENS] * 4, [0.0] * 4)
    asyncio.run(_at_rate(endpoint, warmup, 1.0, budget_s=1.0))
    for rate in options.open_loop_rates:
        run.rates.append(measure_rate(endpoint, plan, rate, options.open_loop_time_budget_s))
    for rate in _search_rates(context):
        if run.max_rate_within_objective != run.rates[-1].rate:
            break
        run.rates.append(measure_rate(endpoint, plan, rate, options.open_loop_time_budget_s))
    return run


def peak_rss_under_load(
    context: BenchContext, server: ServerProcess, sender: RequestSender
) -> float:
    """The server tree's peak RSS (MiB) while `peak_rss_clients` requests run at once."""
    clients = context.options.peak_rss_clients
    server.start_phase()
    run_closed_loop(
        sender,
        context.workload.take(clients, wrapped=False),
        clients,
        warmup=[],
        time_budget_s=context.options.time_budget_s,
    )
    return server.phase_peak_rss_mb
