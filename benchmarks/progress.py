"""One line on stderr per finished measurement, so a long run shows where it is."""

from __future__ import annotations

import sys

from benchmarks.results import Measurement


def announce(measurement: Measurement) -> None:
    print(
        f"[bench] {measurement.label}: {measurement.tokens_per_s:.1f} tok/s, "
        f"p50 {measurement.latency_p50_s:.3f}s, {measurement.requests} requests"
        + (f", {measurement.errors} errors" if measurement.errors else ""),
        file=sys.stderr,
        flush=True,
    )
