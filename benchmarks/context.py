"""What every system's process derives from the options: the model checkpoint and the workload."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.options import BenchOptions
from benchmarks.workload import Workload, build_workload
from model_store.sources import ModelSource, resolve_source

# Warm-up requests are drawn from the far end of the instruction set, away from timed ones.
_WARMUP_OFFSET_FRACTION = 0.5


@dataclass(frozen=True)
class BenchContext:
    options: BenchOptions
    source: ModelSource
    workload: Workload

    @classmethod
    def load(cls, options: BenchOptions) -> BenchContext:
        source = resolve_source(options.model, twin_cache_dir=options.twin_cache_dir)
        return cls(options, source, build_workload(options.instructions_path, source.family))

    def timed(self, parallelism: int, *, wrapped: bool = True) -> list[str]:
        """The timed requests of one measurement (wrapped prompts, or the raw instructions
        for servers that apply the prompt format themselves)."""
        return self.workload.take(self.options.requests_at(parallelism), wrapped=wrapped)

    def warmup(self, parallelism: int, *, wrapped: bool = True) -> list[str]:
        """Untimed requests sent first: enough to fill every batch or client once."""
        count = max(self.options.warmup_requests, parallelism if parallelism > 1 else 0)
        offset = int(len(self.workload.prompts) * _WARMUP_OFFSET_FRACTION)
        return self.workload.take(count, offset, wrapped=wrapped)
