"""The engine step benchmark on a tiny twin: it prefills the batch, times every decode step and
leaves the engine empty for the next measurement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.core.families import get_family
from app.engines.stepwise.engine import ContinuousEngine
from benchmarks.engine_steps import time_steps
from tests.support.twins import FAMILY_TWINS


def test_time_steps_measures_a_batch_and_frees_it(tiny_twin: Callable[[str], Path]) -> None:
    checkpoint = tiny_twin(FAMILY_TWINS["lamini-gpt"])
    engine = ContinuousEngine(checkpoint, get_family("lamini-gpt"), precision="float32")

    timing = time_steps(engine, batch=3, past=12, steps=4)

    assert 0 < timing.step_min_s <= timing.step_median_s
    assert timing.prefill_s > 0
    assert "float32 batch   3" in timing.line()
    assert engine.running == 0
    assert engine.cache_bytes() == 0
