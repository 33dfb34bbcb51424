"""The open-loop scenario's building blocks compute what they claim: the arrival schedule, the
derived figures (kept up, highest rate within the objective), the comparisons with the peer,
the reference lengths, and why the vLLM peer is skipped."""

from __future__ import annotations

import itertools
import math
import os
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.families import get_family
from benchmarks.comparison import open_loop_comparisons
from benchmarks.context import BenchContext
from benchmarks.openloop import OpenLoopPlan
from benchmarks.openloop_results import OpenLoopRun, RateMeasurement, RequestSample
from benchmarks.options import DEFAULT_INSTRUCTIONS, BenchOptions, SystemName
from benchmarks.results import SystemRun
from benchmarks.systems.vllm_peer import skip_reason
from benchmarks.workload import build_workload, reference_lengths

MODEL = "MBZUAI/LaMini-GPT-124M"


def _context(tmp_path: Path, model: str, **options: object) -> BenchContext:
    return BenchContext.load(
        BenchOptions(
            model=model,
            twin_cache_dir=Path(os.environ["LAMINI_TWIN_CACHE_DIR"]),  # the session's
            work_dir=tmp_path,
            output_dir=tmp_path,
            **options,
        )
    )


def test_arrivals_are_one_seeded_poisson_pattern_scaled_by_the_rate(
    tiny_twin: Callable[[str], Path], tmp_path: Path
) -> None:
    tiny_twin(MODEL)
    context = _context(tmp_path, f"twin:{MODEL}@tiny", open_loop_requests=400)
    plan = OpenLoopPlan.from_context(context)
    slow, fast = plan.arrivals(2.0), plan.arrivals(8.0)
    assert slow[0] == fast[0] == 0.0
    assert len(slow) == 400
    assert fast == pytest.approx([t / 4 for t in slow])
    gaps = [b - a for a, b in itertools.pairwise(slow)]
    assert statistics.mean(gaps) == pytest.approx(0.5, rel=0.15)  # exponential, mean 1/rate
    assert statistics.stdev(gaps) == pytest.approx(0.5, rel=0.25)  # ... and sd 1/rate
    assert OpenLoopPlan.from_context(context).unit_gaps == plan.unit_gaps
    assert plan.instructions[:2] == context.workload.take(2, wrapped=False)
    assert all(8 <= n <= 256 for n in plan.max_tokens)


def test_reference_lengths_count_gpt2_tokens_and_clip() -> None:
    references = ("Confident", " word" * 300, "Hello world, this is a test.")
    assert reference_lengths(references, 8, 256) == [8, 256, 8]
    assert reference_lengths(references, 1, 1000) == [2, 300, 8]
    workload = build_workload(DEFAULT_INSTRUCTIONS, get_family("lamini-gpt"))
    assert len(workload.references) == len(workload.instructions) == 252
    assert workload.references[1] == "Confident"


def _sample(sent: float, ttft: float, error: str | None = None) -> RequestSample:
    return RequestSample(
        sent_s=sent,
        max_tokens=4,
        tokens=4,
        ttft_s=ttft,
        e2e_s=ttft + 0.3,
        error=error,
        gaps_s=[0.1, 0.1, 0.1],
    )


def test_a_growing_queue_is_falling_behind_and_a_steady_one_keeps_up() -> None:
    steady = RateMeasurement(rate=4, wall_s=3, samples=[_sample(i / 4, 0.1) for i in range(8)])
    growing = RateMeasurement(
        rate=4, wall_s=9, samples=[_sample(i / 4, 0.1 + 0.3 * i) for i in range(8)]
    )
    assert steady.kept_up
    assert not growing.kept_up
    failed = RateMeasurement(
        rate=4, wall_s=3, samples=[_sample(i / 4, 0.1, "HTTP 429") for i in range(8)]
    )
    assert not failed.kept_up
    assert failed.errors == 8
    assert failed.requests == 0
    assert steady.itl_p99_s == pytest.approx(0.1)
    assert steady.tokens_per_s == pytest.approx(32 / 3)
    assert math.isnan(failed.ttft_p99_s)


def _series(label: str, p99_by_rate: dict[float, float]) -> OpenLoopRun:
    return OpenLoopRun(
        label=label,
        engine=label,
        quantization="int8",
        ttft_objective_s=0.5,
        rates=[
            RateMeasurement(rate=rate, wall_s=10, samples=[_sample(0, p99)])
            for rate, p99 in p99_by_rate.items()
        ],
    )


def test_highest_rate_needs_every_lower_rate_within_the_objective() -> None:
    assert _series("a", {2: 0.1, 4: 0.2, 6: 0.4, 8: 0.7}).max_rate_within_objective == 6
    assert _series("b", {2: 0.1, 4: 0.9, 6: 0.3}).max_rate_within_objective == 2
    assert _series("c", {2: 2.9, 4: 4.5}).max_rate_within_objective is None


def test_open_loop_comparisons_pair_every_lamini_series_with_the_peer() -> None:
    lamini = SystemRun(system=SystemName.LAMINI, open_loop=[_series("ct2", {2: 2.9, 4: 4.5})])
    peer = SystemRun(system=SystemName.VLLM, open_loop=[_series("vllm", {2: 0.2, 4: 0.3, 6: 0.6})])
    by_name = {c.name: c for c in open_loop_comparisons([lamini, peer])}
    ttft = by_name["open loop 2 req/s TTFT p99 vs vLLM"]
    assert (ttft.lamini, ttft.other, ttft.target, ttft.met) == (2.9, 0.2, 1.0, False)
    assert "open loop 6 req/s TTFT p99 vs vLLM" not in by_name  # lamini did not measure 6
    highest = by_name["open loop highest rate with TTFT p99 <= 0.5s vs vLLM"]
    assert (highest.lamini, highest.other, highest.met) == (0.0, 4.0, False)
    assert open_loop_comparisons([lamini]) == []


def test_vllm_is_skipped_with_a_reason(tiny_twin: Callable[[str], Path], tmp_path: Path) -> None:
    tiny_twin(MODEL)
    tiny_twin("MBZUAI/LaMini-T5-61M")
    missing = _context(tmp_path, f"twin:{MODEL}@tiny", vllm_venv=tmp_path / "none")
    assert skip_reason(missing) == (
        f"vLLM not installed: no {tmp_path / 'none' / 'bin' / 'python'} "
        "(create it with benchmarks/install-vllm)"
    )
    seq2seq = _context(tmp_path, "twin:MBZUAI/LaMini-T5-61M@tiny")
    assert "vLLM removed encoder-decoder models" in str(skip_reason(seq2seq))
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    tiny = _context(tmp_path, f"twin:{MODEL}@tiny", vllm_venv=venv)
    assert str(skip_reason(tiny)).startswith("vLLM's CPU attention has no kernel for head size 16")
