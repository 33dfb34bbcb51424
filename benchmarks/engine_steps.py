"""The continuous engine's own step times, per precision, in process (no server, no scheduler):
what `app/engines/stepwise/precision.py` picks its CPU default from.

    python -m benchmarks.engine_steps --model twin:MBZUAI/LaMini-GPT-124M

For each precision and batch size, `batch` copies of a `past`-token prompt are prefilled at
once, then `steps` decode steps are timed; the minimum is the figure least disturbed by other
work on a shared host (the median is printed beside it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from app.engines.base import EngineRequest, SamplingParams
from app.engines.stepwise.engine import ContinuousEngine
from app.settings import Settings
from model_store.sources import resolve_source


@dataclass(frozen=True)
class StepTiming:
    precision: str
    batch: int
    prefill_s: float
    step_min_s: float
    step_median_s: float

    def line(self) -> str:
        return (
            f"{self.precision:>8} batch {self.batch:>3}: prefill {self.prefill_s * 1000:7.1f} ms,"
            f" decode step min {self.step_min_s * 1000:6.1f} ms"
            f" (median {self.step_median_s * 1000:6.1f} ms)"
        )


def time_steps(engine: ContinuousEngine, batch: int, past: int, steps: int) -> StepTiming:
    """Prefill `batch` rows of `past` tokens together, then time `steps` decode steps."""
    prompt = engine.encode("word " * past)[:past]
    request = EngineRequest(prompt, max_new_tokens=steps + 1)
    trackers = [engine.track(request) for _ in range(batch)]
    started = time.perf_counter()
    engine.admit(trackers, [SamplingParams()] * batch)
    prefill = time.perf_counter() - started
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        engine.step()
        durations.append(time.perf_counter() - started)
    engine.abort()
    return StepTiming(
        engine.info.quantization, batch, prefill, min(durations), statistics.median(durations)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="twin:MBZUAI/LaMini-GPT-124M")
    parser.add_argument("--precisions", default="int8,bfloat16,float32")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--past", type=int, default=100, help="prompt tokens before decoding")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    args = parser.parse_args()

    source = resolve_source(args.model, twin_cache_dir=Settings().twin_cache_dir)
    for precision in args.precisions.split(","):
        engine = ContinuousEngine(
            source.checkpoint_dir, source.family, threads=args.threads, precision=precision
        )
        for batch in map(int, args.batches.split(",")):
            print(time_steps(engine, batch, args.past, args.steps).line(), flush=True)


if __name__ == "__main__":
    main()
