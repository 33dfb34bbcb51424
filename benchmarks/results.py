"""Result records: what each system's process reports back to the orchestrator (as JSON).

A `Measurement` is one timed configuration (a batch size, a concurrency level, a quantisation);
its figures are derived from the raw per-request samples it keeps, so reports and plots can
always be recomputed from the JSON file.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field, computed_field

from benchmarks.openloop_results import OpenLoopRun
from benchmarks.options import SystemName
from benchmarks.stats import Throughput, percentile


class Measurement(Throughput):
    """One timed configuration of one system (warm-up excluded)."""

    system: SystemName
    variant: str = Field(description="what distinguishes it within the system, e.g. 'c=32'")
    quantization: str
    engine: str | None = Field(
        default=None, description="lamini-serve's engine setting, when a run compares several"
    )
    max_new_tokens: int
    batch_size: int | None = None
    concurrency: int | None = None
    in_flight: int | None = Field(
        default=None,
        description="sequences computed at once (the raw engine: batch size x parallel batches)",
    )
    streaming: bool = False
    static_prompt: bool = Field(
        default=False, description="CTranslate2 static_prompt: the shared prefix state is cached"
    )
    generated_tokens: int
    latencies_s: list[float]
    ttft_s: list[float] = Field(default_factory=list)
    short_outputs: int = Field(
        default=0, description="requests that ended before max_new_tokens (eos or stop)"
    )
    errors: int = 0
    first_error: str | None = None

    @computed_field
    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def counts(self) -> tuple[int, int]:
        return self.generated_tokens, self.requests

    @computed_field
    @property
    def latency_p50_s(self) -> float:
        return percentile(self.latencies_s, 0.50)

    @computed_field
    @property
    def latency_p95_s(self) -> float:
        return percentile(self.latencies_s, 0.95)

    @computed_field
    @property
    def latency_p99_s(self) -> float:
        return percentile(self.latencies_s, 0.99)

    @computed_field
    @property
    def ttft_p50_s(self) -> float:
        return percentile(self.ttft_s, 0.50)

    @computed_field
    @property
    def ttft_p95_s(self) -> float:
        return percentile(self.ttft_s, 0.95)

    @computed_field
    @property
    def mean_tokens_per_request(self) -> float:
        return self.generated_tokens / self.requests if self.requests else math.nan

    @property
    def label(self) -> str:
        engine = f" {self.engine}" if self.engine else ""
        where = f"{self.system.value}{engine} {self.quantization}"
        return f"{where} {self.variant} n={self.max_new_tokens}"


class SystemRun(BaseModel):
    """Everything one system's process measured, or why it failed or was skipped."""

    system: SystemName
    ok: bool = True
    error: str | None = None
    skipped: str | None = Field(
        default=None,
        description="why the system did not run (not installed, family unsupported): not a "
        "failure, but said in the report",
    )
    peak_rss_mb: float | None = None
    wall_s: float | None = Field(default=None, description="the whole system run, start to end")
    threads: dict[str, int | str] = Field(default_factory=dict)
    settings: dict[str, int | str] = Field(
        default_factory=dict, description="engine and batching settings the system reported"
    )
    cold_start_s: dict[str, float] = Field(
        default_factory=dict,
        description="conversion / first load / store-hit load times, per quantisation",
    )
    cpu_speed: list[float] = Field(
        default_factory=list,
        description="machine.cpu_speed_probe (M loops/s) before and after the system ran",
    )
    cpu_steal: float | None = Field(
        default=None,
        description="share of CPU time the hypervisor gave other guests while the system ran "
        "(/proc/stat steal): a virtual machine whose host is busy runs everything slower",
    )
    notes: list[str] = Field(default_factory=list)
    measurements: list[Measurement] = Field(default_factory=list)
    peak_rss_under_load_mb: dict[str, float] = Field(
        default_factory=dict,
        description="per served configuration: the server tree's peak RSS while "
        "`peak_rss_clients` requests (64) ran at once",
    )
    open_loop: list[OpenLoopRun] = Field(
        default_factory=list, description="open-loop series, one per served configuration"
    )
