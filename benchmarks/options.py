"""What one benchmark run measures: every knob, validated once and handed to each worker process.

The orchestrator writes these options to a JSON file and every system's subprocess reads it
back, so all systems see exactly the same workload and limits.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTRUCTIONS = REPO_ROOT.parent / "shared" / "eval" / "user_oriented_instructions.jsonl"


class SystemName(str, enum.Enum):
    """The systems compared, in the order they run (baselines first)."""

    PIPELINE = "pipeline"
    PIPELINE_BATCHED = "pipeline-batched"
    LITSERVE = "litserve"
    RAW_ENGINE = "raw-engine"
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
    engine: str = Field(default="auto", description="auto = the family's preferred engine")
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
    server_ready_timeout_s: float = Field(default=900.0, gt=0)
    twin_cache_dir: Path
    work_dir: Path
    output_dir: Path
    quick: bool = False

    @field_validator("systems")
    @classmethod
    def _in_run_order(cls, systems: list[SystemName]) -> list[SystemName]:
        if not systems:
            raise ValueError("name at least one system")
        return [system for system in SystemName if system in systems]

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
            SystemName.LAMINI: len(self.quantizations) * lengths * levels * 2,
        }
        return sum(per_system[system] for system in self.systems)

    def requests_at(self, parallelism: int) -> int:
        """Timed requests for one measurement: enough for every client or batch to go twice."""
        return max(self.requests, 2 * parallelism)
