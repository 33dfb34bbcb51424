"""Ratios between lamini-serve and every other system, computed from one run's measurements,
and the issue's targets checked against them.

The raw engine's reference is its best row with or without the cached static prompt:
lamini-serve caches the prompt format's preamble too, so the ceiling must have it. The 0.9x
target bounds the server's own cost, so it compares against the raw engine given the work the
clients give the server: at most as many sequences in flight as there are clients (32 clients
never make a batch of 64). The raw engine's best at any depth - an offline job sorting hundreds
of prompts and keeping 128 in flight - is reported beside it, without a target.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from benchmarks.openloop_results import OpenLoopRun
from benchmarks.options import SystemName
from benchmarks.results import Measurement, SystemRun

# The concurrency the throughput targets are stated at (the largest measured one if absent).
TARGET_CONCURRENCY = 32


@dataclass(frozen=True)
class Comparison:
    """lamini-serve's figure over another system's, and the target it should reach."""

    name: str
    max_new_tokens: int
    quantization: str
    lamini: float
    other: float
    ratio: float
    target: float | None  # None: reported for information
    higher_is_better: bool
    lamini_variant: str
    other_variant: str

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if math.isnan(self.ratio):
            return False
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


def best_measurement(
    runs: Iterable[SystemRun],
    system: SystemName,
    max_in_flight: int | None = None,
    **fields: object,
) -> Measurement | None:
    """The highest-throughput measurement of `system` whose fields equal `fields` (and, with
    `max_in_flight`, that computed at most that many sequences at once)."""
    matches = [
        m
        for run in runs
        if run.system is system and run.ok
        for m in run.measurements
        if m.requests
        and all(getattr(m, name) == value for name, value in fields.items())
        and (max_in_flight is None or (m.in_flight is not None and m.in_flight <= max_in_flight))
    ]
    return max(matches, key=lambda m: m.tokens_per_s, default=None)


def reference_concurrency(concurrency: list[int]) -> int:
    return TARGET_CONCURRENCY if TARGET_CONCURRENCY in concurrency else max(concurrency)


def _throughput_comparisons(
    runs: list[SystemRun], n: int, quantization: str, at: int
) -> list[Comparison]:
    loaded = best_measurement(
        runs,
        SystemName.LAMINI,
        max_new_tokens=n,
        quantization=quantization,
        concurrency=at,
        streaming=False,
    )
    raw = {"quantization": quantization}
    baselines: list[tuple[str, SystemName, dict[str, object], float | None]] = [
        ("vs sequential pipeline", SystemName.PIPELINE, {}, 10),
        ("vs best batched pipeline", SystemName.PIPELINE_BATCHED, {}, 3),
        (f"vs LitServe c={at}", SystemName.LITSERVE, {"concurrency": at, "streaming": False}, 3),
        (f"vs vLLM c={at}", SystemName.VLLM, {"concurrency": at, "streaming": False}, 1.5),
        (
            f"vs raw engine best, <= {at} in flight",
            SystemName.RAW_ENGINE,
            {**raw, "max_in_flight": at},
            0.9,
        ),
        ("vs raw engine best, any depth", SystemName.RAW_ENGINE, raw, None),
    ]
    comparisons = []
    for name, system, fields, target in baselines:
        other = best_measurement(runs, system, max_new_tokens=n, **fields)
        if loaded is None or other is None:
            continue
        comparisons.append(
            Comparison(
                name=f"throughput c={at} {name}",
                max_new_tokens=n,
                quantization=quantization,
                lamini=loaded.tokens_per_s,
                other=other.tokens_per_s,
                ratio=loaded.tokens_per_s / other.tokens_per_s,
                target=target,
                higher_is_better=True,
                lamini_variant=loaded.variant,
                other_variant=f"{other.quantization} {other.variant}",
            )
        )
    return comparisons


def _latency_comparison(runs: list[SystemRun], n: int, quantization: str) -> list[Comparison]:
    single = best_measurement(
        runs,
        SystemName.LAMINI,
        max_new_tokens=n,
        quantization=quantization,
        concurrency=1,
        streaming=False,
    )
    raw = best_measurement(
        runs,
        SystemName.RAW_ENGINE,
        max_new_tokens=n,
        quantization=quantization,
        batch_size=1,
    )
    if single is None or raw is None:
        return []
    return [
        Comparison(
            name="single-request p50 latency vs raw engine batch=1",
            max_new_tokens=n,
            quantization=quantization,
            lamini=single.latency_p50_s,
            other=raw.latency_p50_s,
            ratio=single.latency_p50_s / raw.latency_p50_s,
            target=1.1,
            higher_is_better=False,
            lamini_variant=single.variant,
            other_variant=raw.variant,
        )
    ]


def _open_loop_runs(runs: list[SystemRun], system: SystemName) -> list[OpenLoopRun]:
    return [series for run in runs if run.system is system and run.ok for series in run.open_loop]


def _ratio(lamini: float, other: float) -> float:
    """lamini / other; a peer that never met the objective (0) loses to any rate that did."""
    if other > 0:
        return lamini / other
    return math.inf if lamini > 0 else math.nan


def _open_loop_pair(lamini: OpenLoopRun, peer: OpenLoopRun) -> list[Comparison]:
    """The issue's open-loop goals for one lamini-serve configuration against the peer: TTFT
    p99 and end-to-end p99 at or below the peer's at every rate both measured, and the highest
    rate within the TTFT objective >= 1.3x the peer's."""
    peer_rates = {m.rate: m for m in peer.rates}
    figures = (("TTFT p99", "ttft_p99_s"), ("e2e p99", "e2e_p99_s"))
    comparisons = [
        Comparison(
            name=f"open loop {measured.rate:g} req/s {name} vs vLLM",
            max_new_tokens=0,
            quantization=lamini.quantization,
            lamini=getattr(measured, field),
            other=getattr(peer_rates[measured.rate], field),
            ratio=_ratio(getattr(measured, field), getattr(peer_rates[measured.rate], field)),
            target=1.0,
            higher_is_better=False,
            lamini_variant=lamini.label,
            other_variant=peer.label,
        )
        for measured in lamini.rates
        if measured.rate in peer_rates
        for name, field in figures
    ]
    mine, theirs = lamini.max_rate_within_objective, peer.max_rate_within_objective
    comparisons.append(
        Comparison(
            name=f"open loop highest rate with TTFT p99 <= {lamini.ttft_objective_s:g}s vs vLLM",
            max_new_tokens=0,
            quantization=lamini.quantization,
            lamini=mine or 0.0,
            other=theirs or 0.0,
            ratio=_ratio(mine or 0.0, theirs or 0.0),
            target=1.3,
            higher_is_better=True,
            lamini_variant=lamini.label,
            other_variant=peer.label,
        )
    )
    return comparisons


def open_loop_comparisons(runs: list[SystemRun]) -> list[Comparison]:
    """Every lamini-serve open-loop series against vLLM's (none without the peer)."""
    peers = _open_loop_runs(runs, SystemName.VLLM)
    return [
        comparison
        for lamini in _open_loop_runs(runs, SystemName.LAMINI)
        for peer in peers
        for comparison in _open_loop_pair(lamini, peer)
    ]


def compare(
    runs: list[SystemRun],
    max_new_tokens: list[int],
    quantizations: list[str],
    concurrency: list[int],
) -> list[Comparison]:
    """Every ratio the issue asks for, per output length and lamini-serve quantisation."""
    at = reference_concurrency(concurrency)
    return [
        comparison
        for n in max_new_tokens
        for quantization in quantizations
        for comparison in [
            *_throughput_comparisons(runs, n, quantization, at),
            *_latency_comparison(runs, n, quantization),
        ]
    ] + open_loop_comparisons(runs)
