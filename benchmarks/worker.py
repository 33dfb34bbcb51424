"""`python -m benchmarks.worker SYSTEM OPTIONS_JSON RESULT_JSON`: one in-process system in its
own process, so its peak RSS and threads are its own. Always writes a result (failures too)."""

from __future__ import annotations

import resource
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from benchmarks.context import BenchContext
from benchmarks.options import BenchOptions, SystemName
from benchmarks.results import SystemRun
from benchmarks.systems import pipeline, raw_engine

IN_PROCESS_SYSTEMS: dict[SystemName, Callable[[BenchContext], SystemRun]] = {
    SystemName.PIPELINE: pipeline.run_sequential,
    SystemName.PIPELINE_BATCHED: pipeline.run_batched,
    SystemName.RAW_ENGINE: raw_engine.run,
}


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str]) -> int:
    system_name, options_path, result_path = argv
    system = SystemName(system_name)
    options = BenchOptions.model_validate_json(Path(options_path).read_text(encoding="utf-8"))
    try:
        result = IN_PROCESS_SYSTEMS[system](BenchContext.load(options))
    except Exception as exc:  # a failed system is a result to report, not a crash of the run
        traceback.print_exc()
        result = SystemRun(system=system, ok=False, error=f"{type(exc).__name__}: {exc}")
    result.peak_rss_mb = _peak_rss_mb()
    Path(result_path).write_text(result.model_dump_json(indent=1), encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
