"""What one benchmark run measures: every knob, validated once and handed to each worker process.

The orchestrator writes these options to a JSON file and every system's subprocess reads it
back, so all systems see exactly the same workload and limits.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTRUCTIONS = REPO_ROOT.parent / "shared" / "eval" / "user_oriented_instructions.jsonl"


class SystemName(str, enum.Enum):
    """The systems compared, in the order they run (baselines first)."""

    PIPELINE = "pipeline"
    PIPELINE_BATCHED = "pipeline-batched"
    LITSERVE = "litserve"
    RAW_ENGINE = "raw-engine"
    VLLM = "vllm"
    LAMINI = "lamini-serve"


class ThreadConfig(BaseModel):
    """CTranslate2 threading: `intra` threads per batch, `inter` batches in parallel."""

    intra: int = Field(ge=0)
    inter: int = Field(ge=1)

    @classmethod
    def parse(cls, text: str) -> ThreadConfig:
        """`2x1` -> intra 2, inter 1."""
        intra, _, inter = text.lower().partition("x")
        return cls(intra=int(intra), inter=int(inter or 1))

    def __str__(self) -> str:
        return f"{self.intra}x{self.inter}"


class BenchOptions(BaseModel):
    """Everything a run needs; defaults are the full run, `quick()` shrinks it for CI."""

    model: str
    engine: str = Field(
        default="auto",
        description="engine for raw + lamini-serve; auto = the server's own choice (the "
        "raw engine runs the family's converted engine)",
    )
    systems: list[SystemName] = Field(default_factory=lambda: list(SystemName))
    instructions_path: Path = DEFAULT_INSTRUCTIONS
    requests: int = Field(default=64, ge=1, description="timed requests per measurement")
    warmup_requests: int = Field(default=4, ge=0)
    time_budget_s: float = Field(
        default=60.0, gt=0, description="a measurement stops starting requests after this"
    )
    max_new_tokens: list[int] = Field(default_factory=lambda: [64, 128])
    concurrency: list[int] = Field(default_factory=lambda: [1, 8, 32, 64])
    pipeline_batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 8, 16])
    engine_batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 8, 16, 32, 64])
    quantizations: list[str] = Field(default_factory=lambda: ["int8", "float32"])
    ct2_threads: list[ThreadConfig] = Field(
        default_factory=lambda: [ThreadConfig(intra=0, inter=1), ThreadConfig(intra=1, inter=2)],
        description="the raw engine's layouts: one batch on all cores, and lamini-serve's CPU "
        "default (one single-threaded replica per core, batches side by side)",
    )
    litserve_max_batch_size: int = Field(default=32, ge=1)
    litserve_batch_timeout_s: float = Field(default=0.05, ge=0)
    lamini_env: dict[str, str] = Field(
        default_factory=dict,
        description="extra LAMINI_* settings for the lamini-serve server (threads, batching)",
    )
    lamini_configs: list[str] = Field(
        default_factory=list,
        description="lamini-serve configurations as ENGINE:QUANTIZATION (e.g. ct2:int8); "
        "empty = --engine with each of --quantizations",
    )
    open_loop_rates: list[float] = Field(
        default_factory=lambda: [2.0, 4.0, 6.0],
        description="Poisson arrival rates (req/s) always measured; empty = no open loop",
    )
    open_loop_requests: int = Field(default=80, ge=1, description="requests per rate")
    open_loop_rate_step: float = Field(
        default=2.0, gt=0, description="the upward search for the TTFT objective's highest rate"
    )
    open_loop_max_rate: float = Field(default=16.0, gt=0, description="the search's cap")
    open_loop_ttft_objective_s: float = Field(default=0.5, gt=0, description="TTFT p99 bound")
    open_loop_min_tokens: int = Field(default=8, ge=1)
    open_loop_max_tokens: int = Field(
        default=256, ge=1, description="max_tokens = reference length, clipped to min..max"
    )
    open_loop_time_budget_s: float = Field(
        default=120.0, gt=0, description="a rate stops sending new requests after this"
    )
    open_loop_seed: int = 0
    peak_rss_clients: int = Field(
        default=64, ge=1, description="concurrent requests of the peak-RSS measurement"
    )
    vllm_venv: Path = Field(
        default=Path.home() / ".cache" / "lamini-serve" / "vllm-venv",
        description="virtualenv made by benchmarks/install-vllm",
    )
    vllm_dtype: str = "bfloat16"
    vllm_kv_cache_gib: int = Field(default=2, ge=1, description="VLLM_CPU_KVCACHE_SPACE")
    vllm_cpu_bind: Literal["auto", "all"] = Field(
        default="all",
        description="auto: vLLM's default (one core kept for its API server); all: its compute "
        "threads on every usable core",
    )
    vllm_prefix_caching: bool = Field(
        default=True,
        description="vLLM's automatic prefix caching (its default): prompts it has seen, and "
        "shared leading blocks, skip their prefill",
    )
    server_ready_timeout_s: float = Field(default=900.0, gt=0)
    twin_cache_dir: Path
    work_dir: Path
    output_dir: Path
    tag: str = Field(
        default="", pattern=r"^[A-Za-z0-9._-]*$", description="suffix of the result files' names"
    )
    quick: bool = False

    @field_validator("systems")
    @classmethod
    def _in_run_order(cls, systems: list[SystemName]) -> list[SystemName]:
        if not systems:
            raise ValueError("name at least one system")
        return [system for system in SystemName if system in systems]

    @field_validator("open_loop_rates")
    @classmethod
    def _rates_positive_and_sorted(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError("rates must be > 0")
        return sorted(set(values))

    @field_validator("lamini_configs")
    @classmethod
    def _engine_colon_quantization(cls, values: list[str]) -> list[str]:
        if any(not engine or not quantization for engine, _, quantization in map(_split, values)):
            raise ValueError("each configuration is ENGINE:QUANTIZATION, e.g. ct2:int8")
        return values

    def served_configs(self) -> list[tuple[str, str]]:
        """lamini-serve's (engine, quantization) pairs, in the order they run."""
        if self.lamini_configs:
            return [
                (engine, quantization)
                for engine, _, quantization in map(_split, self.lamini_configs)
            ]
        return [(self.engine, quantization) for quantization in self.quantizations]

    @field_validator("max_new_tokens", "concurrency", "pipeline_batch_sizes", "engine_batch_sizes")
    @classmethod
    def _positive_and_sorted(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("needs at least one value, all >= 1")
        return sorted(set(values))

    def planned_measurements(self, static_prompt: bool) -> int:
        """How many measurements the run will time (each capped by `time_budget_s`)."""
        lengths, levels = len(self.max_new_tokens), len(self.concurrency)
        raw_per_length = len(self.engine_batch_sizes) + (2 if static_prompt else 0)
        per_system = {
            SystemName.PIPELINE: lengths,
            SystemName.PIPELINE_BATCHED: lengths * len(self.pipeline_batch_sizes),
            SystemName.LITSERVE: lengths * levels,
            SystemName.RAW_ENGINE: len(self.quantizations)
            * len(self.ct2_threads)
            * lengths
            * raw_per_length,
            SystemName.VLLM: lengths * levels,
            SystemName.LAMINI: len(self.served_configs()) * lengths * levels * 2,
        }
        return sum(per_system[system] for system in self.systems)

    def requests_at(self, parallelism: int) -> int:
        """Timed requests for one measurement: enough for every client or batch to go twice."""
        return max(self.requests, 2 * parallelism)


def _split(config: str) -> tuple[str, str, str]:
    return config.partition(":")
