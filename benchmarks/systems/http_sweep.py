"""The measurement loop both HTTP systems share: every output length at every concurrency."""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.context import BenchContext
from benchmarks.loadgen import RequestSender, run_closed_loop, to_measurement
from benchmarks.progress import announce
from benchmarks.results import SystemRun


def sweep_concurrency(
    context: BenchContext,
    run: SystemRun,
    sender_for: Callable[[int], RequestSender],
    *,
    quantization: str,
    streaming: bool = False,
    engine: str | None = None,
) -> None:
    """Closed-loop load at each `--concurrency` level for each `--max-new-tokens` value.

    Servers apply the prompt format themselves, so they receive the user's instructions.
    """
    options = context.options
    for max_new_tokens in options.max_new_tokens:
        for concurrency in options.concurrency:
            load = run_closed_loop(
                sender_for(max_new_tokens),
                context.timed(concurrency, wrapped=False),
                concurrency,
                warmup=context.warmup(concurrency, wrapped=False),
                time_budget_s=options.time_budget_s,
            )
            measurement = to_measurement(
                load,
                system=run.system,
                quantization=quantization,
                max_new_tokens=max_new_tokens,
                concurrency=concurrency,
                streaming=streaming,
            )
            measurement.engine = engine
            announce(measurement)
            run.measurements.append(measurement)
