"""Result records of the open-loop scenario: one `RateMeasurement` per offered rate, grouped in
an `OpenLoopRun` per served configuration (system, engine, precision).

Only raw per-request samples are stored; every figure (percentiles, throughput, whether the
system kept up, the highest rate within the TTFT objective) is derived from them, so a report
can be recomputed from the JSON file.
"""

from __future__ import annotations

import statistics
from typing import Any

from pydantic import BaseModel, Field, computed_field, field_serializer

from benchmarks.stats import Throughput, percentile

# "Kept up": a system that serves the offered rate has a stationary queue, so the requests
# arriving last wait about as long for their first token as the first ones. A system that falls
# behind builds a queue and the TTFT grows with every arrival. The last quarter's median TTFT
# may be at most this factor times the first quarter's, plus the slack (noise on tiny figures).
_KEPT_UP_FACTOR = 2.0
_KEPT_UP_SLACK_S = 0.25


def _percentile_field(samples: str, fraction: float) -> Any:
    """A computed float field: the `fraction` percentile of the measurement's `samples`."""
    return computed_field(
        property(lambda self: percentile(getattr(self, samples), fraction)), return_type=float
    )


class RequestSample(BaseModel):
    """One streamed request as the client saw it (times in seconds)."""

    sent_s: float = Field(description="when it was sent, from the first arrival")
    max_tokens: int
    tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    gaps_s: list[float] = Field(
        default_factory=list, description="time between consecutive streamed tokens"
    )
    error: str | None = None

    @field_serializer("sent_s", "ttft_s", "e2e_s", "gaps_s")
    def _microseconds(self, value: float | list[float] | None) -> float | list[float] | None:
        """Stored to the microsecond: thousands of gaps per rate stay a readable file."""
        if isinstance(value, list):
            return [round(gap, 6) for gap in value]
        return None if value is None else round(value, 6)


class RateMeasurement(Throughput):
    """Poisson arrivals at one offered rate (warm-up excluded); `wall_s` runs from the first
    arrival to the last answer, so tokens/s and requests/s include the drain."""

    rate: float = Field(description="offered requests per second")
    samples: list[RequestSample]

    @property
    def ok(self) -> list[RequestSample]:
        return [s for s in self.samples if s.error is None and s.ttft_s is not None]

    @computed_field
    @property
    def requests(self) -> int:
        return len(self.ok)

    @computed_field
    @property
    def errors(self) -> int:
        return len(self.samples) - len(self.ok)

    @computed_field
    @property
    def first_error(self) -> str | None:
        return next((s.error for s in self.samples if s.error is not None), None)

    @property
    def ttft_samples(self) -> list[float]:
        return [s.ttft_s for s in self.ok if s.ttft_s is not None]

    @property
    def e2e_samples(self) -> list[float]:
        return [s.e2e_s for s in self.ok if s.e2e_s is not None]

    @property
    def itl_samples(self) -> list[float]:
        return [gap for s in self.ok for gap in s.gaps_s]

    ttft_p50_s = _percentile_field("ttft_samples", 0.50)
    ttft_p99_s = _percentile_field("ttft_samples", 0.99)
    e2e_p50_s = _percentile_field("e2e_samples", 0.50)
    e2e_p99_s = _percentile_field("e2e_samples", 0.99)
    itl_p50_s = _percentile_field("itl_samples", 0.50)
    itl_p99_s = _percentile_field("itl_samples", 0.99)

    @computed_field
    @property
    def generated_tokens(self) -> int:
        return sum(s.tokens for s in self.ok)

    @computed_field
    @property
    def requested_tokens(self) -> int:
        return sum(s.max_tokens for s in self.samples)

    def counts(self) -> tuple[int, int]:
        return self.generated_tokens, self.requests

    @computed_field
    @property
    def kept_up(self) -> bool:
        """No error, and the queue did not grow (see _KEPT_UP_FACTOR)."""
        ordered = sorted(self.ok, key=lambda s: s.sent_s)
        quarter = len(ordered) // 4
        if self.errors or quarter == 0:
            return not self.errors and bool(ordered)
        first = statistics.median(s.ttft_s or 0.0 for s in ordered[:quarter])
        last = statistics.median(s.ttft_s or 0.0 for s in ordered[-quarter:])
        return last <= _KEPT_UP_FACTOR * first + _KEPT_UP_SLACK_S


class OpenLoopRun(BaseModel):
    """The open-loop series of one served configuration, rates ascending."""

    label: str = Field(description="e.g. 'lamini-serve ct2 int8' or 'vllm bfloat16'")
    engine: str
    quantization: str
    ttft_objective_s: float
    rates: list[RateMeasurement] = Field(default_factory=list)

    @computed_field
    @property
    def max_rate_within_objective(self) -> float | None:
        """The highest rate whose TTFT p99 met the objective, every lower rate meeting it too
        (None: not even the lowest one did)."""
        best = None
        for measured in sorted(self.rates, key=lambda m: m.rate):
            if measured.errors or not measured.ttft_p99_s <= self.ttft_objective_s:
                break
            best = measured.rate
        return best
