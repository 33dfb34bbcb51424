"""The one settings object: `LAMINI_*` environment variables, with CLI flags on top.

Every knob of lamini-serve lives here, so a deployment can be configured entirely from the
environment (Docker, compose) and a developer entirely from flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from platformdirs import user_cache_dir
from pydantic import Field, field_validator
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
    engine: Literal["auto", "ct2", "onnx", "transformers"] = Field(
        default="auto", description="Engine; auto = the family's preferred engine."
    )
    quantization: str | None = Field(
        default=None,
        description="Weights precision: float32, int8, int8_float32, int8_float16, float16 "
        "(default int8 on CPU, float16 on CUDA for CTranslate2; float32 for the others).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Device.")
    intra_threads: int = Field(
        default=0, ge=0, description="Threads per batch computation (0 = one per core)."
    )
    inter_threads: int = Field(default=1, ge=1, description="Batches computed in parallel.")

    # --- where things live ---------------------------------------------------------------------
    store_dir: Path = Field(
        default_factory=lambda: _default_cache_root() / "store",
        description="Model store: converted engines, one entry per model/engine/quantisation.",
    )
    twin_cache_dir: Path = Field(
        default_factory=lambda: _default_cache_root() / "twins",
        description="Where twin:<hub id> checkpoints are built once and reused.",
    )

    # --- logging -------------------------------------------------------------------------------
    log_format: Literal["json", "plain"] = Field(default="plain", description="Log line format.")
    log_level: str = Field(default="info", description="Log level.")

    @field_validator("models", mode="before")
    @classmethod
    def _split_model_list(cls, value: object) -> object:
        return _split_models(value)
