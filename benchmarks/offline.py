"""Timing in-process systems (pipelines, raw engines): fixed batches over the workload.

These systems have no request queue, so a "request" is one prompt of a batch and its latency is
the time of the batch that carried it - what a caller batching offline would wait. Batches can
run on several threads at once (CTranslate2 `inter_threads`); each thread times its own batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from benchmarks.options import SystemName
from benchmarks.results import Measurement

# Runs one batch of prompts; returns the number of tokens generated for each prompt.
BatchRunner = Callable[[list[str]], list[int]]


@dataclass
class BatchTiming:
    """Per-prompt latencies and token counts of one timed pass, and its wall time."""

    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    token_counts: list[int] = field(default_factory=list)


def _chunks(prompts: list[str], size: int) -> list[list[str]]:
    return [prompts[start : start + size] for start in range(0, len(prompts), size)]


def time_batches(
    run_batch: BatchRunner,
    prompts: list[str],
    batch_size: int,
    *,
    warmup_prompts: list[str],
    time_budget_s: float,
    parallel: int = 1,
) -> BatchTiming:
    """Run `warmup_prompts` untimed, then `prompts` in batches of `batch_size`.

    No new batch starts once `time_budget_s` has passed, so slow configurations end early with
    fewer (but still complete) batches.
    """
    for chunk in _chunks(warmup_prompts, batch_size):
        run_batch(chunk)
    timing = BatchTiming()
    started = time.perf_counter()
    deadline = started + time_budget_s

    def run_one(chunk: list[str]) -> None:
        if time.perf_counter() > deadline:
            return
        batch_started = time.perf_counter()
        counts = run_batch(chunk)
        elapsed = time.perf_counter() - batch_started
        timing.latencies_s.extend([elapsed] * len(chunk))
        timing.token_counts.extend(counts)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run_one, _chunks(prompts, batch_size)))
    timing.wall_s = time.perf_counter() - started
    return timing


def to_measurement(
    timing: BatchTiming,
    *,
    system: SystemName,
    variant: str,
    quantization: str,
    max_new_tokens: int,
    batch_size: int,
    parallel: int = 1,
    static_prompt: bool = False,
) -> Measurement:
    return Measurement(
        system=system,
        variant=variant,
        quantization=quantization,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        in_flight=batch_size * parallel,
        static_prompt=static_prompt,
        wall_s=timing.wall_s,
        generated_tokens=sum(timing.token_counts),
        latencies_s=timing.latencies_s,
        short_outputs=sum(1 for count in timing.token_counts if count < max_new_tokens),
    )
