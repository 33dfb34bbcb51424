"""The one settings object: `LAMINI_*` environment variables, with CLI flags on top.

Every knob of lamini-serve lives here, so a deployment can be configured entirely from the
environment (Docker, compose) and a developer entirely from flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_cache_dir
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "MBZUAI/LaMini-Flan-T5-248M"


def _default_cache_root() -> Path:
    return Path(user_cache_dir("lamini-serve", appauthor=False))


def _split_models(value: object) -> object:
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    return value


class Settings(BaseSettings):
    """All configuration. Environment: `LAMINI_<FIELD>` (e.g. `LAMINI_MODELS`, `LAMINI_PORT`)."""

    model_config = SettingsConfigDict(env_prefix="LAMINI_", extra="ignore")

    # --- what to serve -------------------------------------------------------------------------
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="Models to serve: hub ids, local checkpoint dirs or twin:<hub id>[@tiny] "
        "(comma or space separated in the environment). The first one is the default.",
    )
    family: str | None = Field(
        default=None, description="Force the family of every served model (else auto-detected)."
    )
    engine: Literal["auto", "ct2", "onnx", "transformers", "continuous"] = Field(
        default="auto",
        description="Engine; auto = continuous on the CPU for the GPT-2 families (LaMini-GPT, "
        "LaMini-Cerebras) where torch is installed, else the family's converted engine (ct2; "
        "onnx for GPT-Neo). continuous = transformers models stepped with iteration-level "
        "scheduling (requests join a running batch).",
    )
    quantization: str | None = Field(
        default=None,
        description="Weights precision: float32, int8, int8_float32, int8_float16, float16, "
        "bfloat16 (default int8 on CPU, float16 on CUDA for CTranslate2; for continuous "
        "int8 on CPUs with int8 kernels (AVX2, ARM), bfloat16 on CUDA; float32 for the others).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Device.")
    intra_threads: int | None = Field(
        default=None,
        ge=0,
        description="Threads per batch computation (0 = one per core; default: the engine's "
        "best layout - 1 for CTranslate2 on CPU, one per core for the others).",
    )
    inter_threads: int | None = Field(
        default=None,
        ge=1,
        description="Batches computed in parallel (CTranslate2 replicas; default: one per core "
        "for CTranslate2 on CPU when intra_threads is 1, else 1).",
    )

    # --- where things live ---------------------------------------------------------------------
    store_dir: Path = Field(
        default_factory=lambda: _default_cache_root() / "store",
        description="Model store: converted engines, one entry per model/engine/quantisation.",
    )
    convert: Literal["auto", "never"] = Field(
        default="auto",
        description="auto: a model with no store entry is converted on first use (needs the "
        "convert extra); never: only existing entries are opened and nothing is written to the "
        "store - a missing entry is a startup error (replicas sharing a read-only store that a "
        "convert Job filled).",
    )
    twin_cache_dir: Path = Field(
        default_factory=lambda: _default_cache_root() / "twins",
        description="Where twin:<hub id> checkpoints are built once and reused.",
    )

    # --- HTTP service ---------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port the HTTP server uses.")
    max_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Most sequences in one batch: a window batch (default 32) or running "
        "together in the continuous engine (default 128).",
    )
    max_batch_wait_ms: float = Field(
        default=100.0,
        ge=0,
        description="Longest a batch waits for more requests once the engine is free.",
    )
    batch_quiet_ms: float = Field(
        default=15.0,
        ge=0,
        description="A filling batch starts once no request has arrived for this long.",
    )
    max_batch_tokens: int = Field(
        default=16384,
        ge=1,
        description="Cap on prompt + max_new_tokens summed over one batch (memory bound).",
    )
    max_batch_total_tokens: int = Field(
        default=512,
        ge=1,
        description="Continuous engine: tokens one turn may compute, prompts joining plus "
        "running sequences; longer prompts are prefilled in chunks of it (decoder-only: "
        "columns; encoder-decoder: layers of the encoder pass), which bounds how long "
        "newcomers' prefill stalls the running batch.",
    )
    max_kv_cache_mb: float = Field(
        default=4096.0,
        gt=0,
        description="Continuous engine: KV-cache budget; requests wait while the running "
        "batch could outgrow it.",
    )
    prefix_cache_mb: float = Field(
        default=1024.0,
        ge=0,
        description="Continuous engine, decoder-only: memory for recent prompts' KV states, so "
        "a prompt starting like one of them skips that part of its prefill; 0 turns it off.",
    )
    max_queue_size: int = Field(
        default=256, ge=1, description="Waiting requests per model before answering 429."
    )
    max_client_batch_size: int = Field(
        default=32, ge=1, description="Most prompts in one `inputs` list."
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest a request may wait and run before a 504."
    )
    shutdown_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish."
    )
    max_body_bytes: int = Field(
        default=1_000_000, ge=1, description="Largest request body accepted (else 413)."
    )
    max_stop_sequences: int = Field(default=8, ge=0, description="Most stop sequences a request.")
    default_max_new_tokens: int = Field(
        default=100, ge=1, description="max_new_tokens when a request does not say."
    )
    retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After seconds sent with 429 (queue full)."
    )

    # --- access control (OpenAI routes and every generation route) ------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys accepted as `Authorization: Bearer <key>` (comma separated). "
        "With no keys and no api_keys_file, the server is open.",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="File of accepted keys as SHA-256 hex digests, one a line (`#` comments "
        'allowed); make a line with `printf %s "$KEY" | sha256sum`.',
    )
    auth_protect_metrics: bool = Field(
        default=False, description="Require an API key for /metrics too (health stays open)."
    )
    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS (comma separated, `*` = any); empty = no CORS.",
    )
    cors_allow_credentials: bool = Field(
        default=False, description="Let browsers send credentials cross-origin (not with `*`)."
    )

    # --- logging -------------------------------------------------------------------------------
    log_format: Literal["json", "plain"] = Field(default="plain", description="Log line format.")
    log_level: str = Field(default="info", description="Log level.")

    @field_validator("models", "api_keys", "cors_allow_origins", mode="before")
    @classmethod
    def _split_model_list(cls, value: object) -> object:
        return _split_models(value)
