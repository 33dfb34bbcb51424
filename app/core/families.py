"""The family registry: the single source of truth for every model family lamini-serve serves.

A *family* decides everything that depends on how a model was trained rather than on how it is
run: which hub ids belong to it, its architecture, the prompt it expects, how its raw output is
tidied, the generation settings its model card recommends and the engine that runs it best.
Conversion, the model store and the HTTP service all ask this module; nothing else re-decides a
family.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.engine_kinds import EngineKind
from app.core.errors import FamilyResolutionError
from app.core.prompts import ALPACA, NEWLINE_HACK, RAW, RAW_WITH_BOS, PromptFormat


class Task(str, enum.Enum):
    """How the model produces text: encoder-decoder or decoder-only."""

    SEQ2SEQ = "text2text-generation"
    CAUSAL = "text-generation"


@dataclass(frozen=True)
class Architecture:
    """A transformers architecture: its config `model_type`, model class and task."""

    model_type: str
    class_name: str
    task: Task


T5 = Architecture("t5", "T5ForConditionalGeneration", Task.SEQ2SEQ)
GPT2 = Architecture("gpt2", "GPT2LMHeadModel", Task.CAUSAL)
GPT_NEO = Architecture("gpt_neo", "GPTNeoForCausalLM", Task.CAUSAL)
OPT = Architecture("opt", "OPTForCausalLM", Task.CAUSAL)


@dataclass(frozen=True)
class RecommendedSampling:
    """Generation settings the model card recommends (used when a caller asks for them)."""

    do_sample: bool = True
    max_new_tokens: int = 256
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class Family:
    """Everything lamini-serve knows about one model family."""

    name: str
    description: str
    hub_ids: tuple[str, ...]
    arch: Architecture
    prompt_format: PromptFormat
    recommended: RecommendedSampling
    engines: tuple[EngineKind, ...]
    name_hints: tuple[str, ...]
    # The continuous engine is this family's default on the CPU: measured ahead of its converted
    # engine there by the rule in benchmarks/README.md (the default-engine rule)
    continuous_on_cpu: bool = False

    @property
    def model_type(self) -> str:
        return self.arch.model_type

    @property
    def architecture(self) -> str:
        """The transformers model class name, as `config.json` lists it."""
        return self.arch.class_name

    @property
    def task(self) -> Task:
        return self.arch.task

    @property
    def preferred_engine(self) -> EngineKind:
        """The fastest converted engine that can run this family (the first of `engines`):
        what a model store holds for it."""
        return self.engines[0]

    @property
    def is_seq2seq(self) -> bool:
        return self.task is Task.SEQ2SEQ


_CARD_LAMINI = RecommendedSampling(do_sample=True, max_new_tokens=256, repetition_penalty=1.5)
_CARD_DOLLY = RecommendedSampling(do_sample=True, max_new_tokens=256)
_CARD_OPT = RecommendedSampling(do_sample=False, max_new_tokens=256)

_ALL_ENGINES = (
    EngineKind.CTRANSLATE2,
    EngineKind.ONNX,
    EngineKind.TRANSFORMERS,
    EngineKind.CONTINUOUS,
)

FAMILIES: tuple[Family, ...] = (
    Family(
        name="lamini-t5",
        description="LaMini-T5 (t5 architecture): raw instruction in, stripped text out",
        hub_ids=("MBZUAI/LaMini-T5-61M", "MBZUAI/LaMini-T5-223M", "MBZUAI/LaMini-T5-738M"),
        arch=T5,
        prompt_format=RAW,
        recommended=_CARD_LAMINI,
        engines=_ALL_ENGINES,
        name_hints=("lamini-t5",),
    ),
    Family(
        name="lamini-flan-t5",
        description="LaMini-Flan-T5 (flan-t5 architecture): raw instruction in, stripped text out",
        hub_ids=(
            "MBZUAI/LaMini-Flan-T5-77M",
            "MBZUAI/LaMini-Flan-T5-248M",
            "MBZUAI/LaMini-Flan-T5-783M",
        ),
        arch=T5,
        prompt_format=RAW,
        recommended=_CARD_LAMINI,
        engines=_ALL_ENGINES,
        name_hints=("lamini-flan-t5",),
        continuous_on_cpu=True,
    ),
    Family(
        name="lamini-cerebras",
        description="LaMini-Cerebras (GPT-2 architecture): Alpaca wrapper, response cut out",
        hub_ids=(
            "MBZUAI/LaMini-Cerebras-111M",
            "MBZUAI/LaMini-Cerebras-256M",
            "MBZUAI/LaMini-Cerebras-590M",
            "MBZUAI/LaMini-Cerebras-1.3B",
        ),
        arch=GPT2,
        prompt_format=ALPACA,
        recommended=_CARD_LAMINI,
        engines=_ALL_ENGINES,
        name_hints=("lamini-cerebras",),
        continuous_on_cpu=True,
    ),
    Family(
        name="lamini-gpt",
        description="LaMini-GPT (GPT-2): Alpaca wrapper, response cut out",
        hub_ids=("MBZUAI/LaMini-GPT-124M", "MBZUAI/LaMini-GPT-774M", "MBZUAI/LaMini-GPT-1.5B"),
        arch=GPT2,
        prompt_format=ALPACA,
        recommended=_CARD_LAMINI,
        engines=_ALL_ENGINES,
        name_hints=("lamini-gpt",),
        continuous_on_cpu=True,
    ),
    Family(
        name="lamini-neo",
        description="LaMini-Neo (GPT-Neo): Alpaca wrapper; CTranslate2 cannot convert GPT-Neo",
        hub_ids=("MBZUAI/LaMini-Neo-125M", "MBZUAI/LaMini-Neo-1.3B"),
        arch=GPT_NEO,
        prompt_format=ALPACA,
        recommended=_CARD_LAMINI,
        engines=(EngineKind.ONNX, EngineKind.TRANSFORMERS, EngineKind.CONTINUOUS),
        name_hints=("lamini-neo",),
    ),
    Family(
        name="opt-iml",
        description="OPT-IML (OPT): raw prompt after the </s> bos token, prompt echo removed",
        hub_ids=("facebook/opt-iml-max-1.3b", "facebook/opt-iml-1.3b"),
        arch=OPT,
        prompt_format=RAW_WITH_BOS,
        recommended=_CARD_OPT,
        engines=_ALL_ENGINES,
        name_hints=("opt-iml",),
    ),
    Family(
        name="flant5-dolly",
        description="flan-T5 fine-tuned on Dolly: newline hack (<_LB_>/<_T_>) in and out",
        hub_ids=("jmhessel/flant5-dolly-xxl",),
        arch=T5,
        prompt_format=NEWLINE_HACK,
        recommended=_CARD_DOLLY,
        engines=_ALL_ENGINES,
        name_hints=("flant5-dolly", "dolly"),
    ),
)

_BY_NAME = {family.name: family for family in FAMILIES}
_BY_HUB_ID = {hub_id.lower(): family for family in FAMILIES for hub_id in family.hub_ids}

# config.json attribute in which a twin records the hub id it imitates.
SOURCE_MODEL_CONFIG_KEY = "lamini_source_model"


def family_names() -> list[str]:
    return [family.name for family in FAMILIES]


def all_hub_ids() -> list[str]:
    return [hub_id for family in FAMILIES for hub_id in family.hub_ids]


def get_family(name: str) -> Family:
    """Return the family called `name`, or raise an error listing the valid names."""
    family = _BY_NAME.get(name.strip().lower())
    if family is None:
        raise FamilyResolutionError(
            f"unknown family {name!r}; valid families: {', '.join(family_names())}"
        )
    return family


def family_for_hub_id(hub_id: str) -> Family | None:
    """The family of a known hub id (case-insensitive exact match), else None."""
    return _BY_HUB_ID.get(hub_id.strip().lower())


def canonical_hub_id(hub_id: str) -> str | None:
    """The registry's spelling of a known hub id (`mbzuai/lamini-gpt-124m` -> `MBZUAI/...`)."""
    wanted = hub_id.strip().lower()
    return next((known for known in all_hub_ids() if known.lower() == wanted), None)


def _family_hint_help() -> str:
    return "pass --family NAME (or LAMINI_FAMILY) to say which one it is; families: " + ", ".join(
        family_names()
    )


def _match_hints(text: str, candidates: Iterable[Family]) -> list[Family]:
    """Families whose name hint occurs in `text`; an exact hub id decides on its own."""
    lowered = text.lower().replace("_", "-")
    exact = family_for_hub_id(text)
    if exact is not None:
        return [exact] if exact in candidates else []
    return [f for f in candidates if any(hint in lowered for hint in f.name_hints)]


def _directory_names(directory: Path) -> list[str]:
    """The names a checkpoint directory itself carries: its own name, and for a snapshot in the
    huggingface_hub cache (`models--MBZUAI--LaMini-GPT-124M/snapshots/<commit>`) the hub id.

    Parent folders are not asked: a checkpoint kept under `~/dolly-experiments/` is not a
    flant5-dolly model for that.
    """
    resolved = directory.resolve()
    names = [resolved.name]
    repo_folder = resolved.parent.parent.name
    if resolved.parent.name == "snapshots" and repo_folder.startswith("models--"):
        names.append(repo_folder.removeprefix("models--").replace("--", "/"))
    return names


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FamilyResolutionError(
            f"{directory} has no config.json, so it is not a Hugging Face checkpoint directory"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FamilyResolutionError(f"cannot read {config_path}: {exc}") from None
    if not isinstance(config, dict):
        raise FamilyResolutionError(f"{config_path} is not a JSON object")
    return config


def family_for_checkpoint(directory: Path, explicit: str | None = None) -> Family:
    """Decide the family of a local Hugging Face checkpoint directory.

    An explicit family always wins (over every name; a checkpoint of another architecture is an
    error). Otherwise the architecture (`model_type` in config.json)
    narrows the candidates and the model's name picks one of them: the hub id recorded by a
    twin, then `_name_or_path`, then the directory's own name (or its hub cache folder); an
    architecture only one family has decides on its own. Two families that share an
    architecture are never guessed between: raw T5 and newline-hack T5 differ only in the
    prompt, so a wrong guess silently ruins every answer.
    """
    config = _read_config(directory)
    model_type = str(config.get("model_type", ""))
    if explicit:
        family = get_family(explicit)
        if model_type and model_type != family.model_type:
            raise FamilyResolutionError(
                f"{directory} is a {model_type} checkpoint, but the {family.name} family is "
                f"{family.model_type}; pass the right --family or none"
            )
        return family
    architectures = config.get("architectures") or []
    candidates = [
        f
        for f in FAMILIES
        if f.model_type == model_type or (not model_type and f.architecture in architectures)
    ]
    if not candidates:
        supported = sorted({f.model_type for f in FAMILIES})
        raise FamilyResolutionError(
            f"{directory}: model_type {model_type!r} is not served by lamini-serve "
            f"(supported model types: {', '.join(supported)})"
        )
    names: list[str] = [
        str(config.get(SOURCE_MODEL_CONFIG_KEY) or ""),
        str(config.get("_name_or_path") or ""),
    ]
    names += _directory_names(directory)
    for name in filter(None, names):
        matches = _match_hints(name, candidates)
        if len(matches) == 1:
            return matches[0]
    if len(candidates) == 1:
        return candidates[0]
    choices = ", ".join(f.name for f in candidates)
    raise FamilyResolutionError(
        f"cannot tell which family the {model_type} checkpoint {directory} belongs to "
        f"(could be: {choices}); {_family_hint_help()}"
    )
