"""Figures derived from raw samples, shared by every result record (no numpy needed)."""

from __future__ import annotations

import math

from pydantic import BaseModel, computed_field


def percentile(samples: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (numpy's default) of non-empty `samples`; NaN if empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def per_second(count: float, seconds: float) -> float:
    """`count` over `seconds`; NaN for an empty measurement."""
    return count / seconds if seconds > 0 else math.nan


class Throughput(BaseModel):
    """Tokens and answered requests per second of a timed measurement; the subclass says what
    it generated and answered (`counts`)."""

    wall_s: float

    def counts(self) -> tuple[int, int]:
        """(generated tokens, answered requests)."""
        raise NotImplementedError

    @computed_field
    @property
    def tokens_per_s(self) -> float:
        return per_second(self.counts()[0], self.wall_s)

    @computed_field
    @property
    def requests_per_s(self) -> float:
        return per_second(self.counts()[1], self.wall_s)
