"""The family registry: every zoo id maps to its family, checkpoints are recognised from their
config and name, and an ambiguous checkpoint is never guessed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.core.engine_kinds import EngineKind
from app.core.errors import FamilyResolutionError
from app.core.families import (
    FAMILIES,
    SOURCE_MODEL_CONFIG_KEY,
    all_hub_ids,
    canonical_hub_id,
    family_for_checkpoint,
    family_for_hub_id,
    family_names,
    get_family,
)

MODELS_MD_IDS = {
    "lamini-t5": ["MBZUAI/LaMini-T5-61M", "MBZUAI/LaMini-T5-223M", "MBZUAI/LaMini-T5-738M"],
    "lamini-flan-t5": [
        "MBZUAI/LaMini-Flan-T5-77M",
        "MBZUAI/LaMini-Flan-T5-248M",
        "MBZUAI/LaMini-Flan-T5-783M",
    ],
    "lamini-cerebras": [
        "MBZUAI/LaMini-Cerebras-111M",
        "MBZUAI/LaMini-Cerebras-256M",
        "MBZUAI/LaMini-Cerebras-590M",
        "MBZUAI/LaMini-Cerebras-1.3B",
    ],
    "lamini-gpt": ["MBZUAI/LaMini-GPT-124M", "MBZUAI/LaMini-GPT-774M", "MBZUAI/LaMini-GPT-1.5B"],
    "lamini-neo": ["MBZUAI/LaMini-Neo-125M", "MBZUAI/LaMini-Neo-1.3B"],
    "opt-iml": ["facebook/opt-iml-max-1.3b", "facebook/opt-iml-1.3b"],
    "flant5-dolly": ["jmhessel/flant5-dolly-xxl"],
}


def _checkpoint(root: Path, name: str, **config: Any) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def _one_line(message: str) -> bool:
    return "\n" not in message and bool(message.strip())


@pytest.mark.parametrize(("family_name", "hub_ids"), MODELS_MD_IDS.items())
def test_every_hub_id_of_the_zoo_maps_to_its_family(family_name: str, hub_ids: list[str]) -> None:
    for hub_id in hub_ids:
        assert family_for_hub_id(hub_id) is get_family(family_name)
        assert family_for_hub_id(hub_id.upper()) is get_family(family_name)
        assert family_for_hub_id(f"  {hub_id.lower()} ") is get_family(family_name)


def test_registry_holds_exactly_the_zoo() -> None:
    assert sorted(all_hub_ids()) == sorted(i for ids in MODELS_MD_IDS.values() for i in ids)
    assert family_names() == list(MODELS_MD_IDS)


def test_canonical_hub_id_restores_the_registry_spelling() -> None:
    assert canonical_hub_id("mbzuai/lamini-gpt-124m") == "MBZUAI/LaMini-GPT-124M"
    assert canonical_hub_id("MBZUAI/LaMini-GPT-125M") is None


def test_unknown_hub_id_has_no_family() -> None:
    assert family_for_hub_id("google/flan-t5-base") is None
    assert family_for_hub_id("MBZUAI/LaMini-GPT") is None


def test_architecture_and_engines_follow_models_md() -> None:
    archs = {family.name: (family.model_type, family.architecture) for family in FAMILIES}

    assert archs == {
        "lamini-t5": ("t5", "T5ForConditionalGeneration"),
        "lamini-flan-t5": ("t5", "T5ForConditionalGeneration"),
        "lamini-cerebras": ("gpt2", "GPT2LMHeadModel"),
        "lamini-gpt": ("gpt2", "GPT2LMHeadModel"),
        "lamini-neo": ("gpt_neo", "GPTNeoForCausalLM"),
        "opt-iml": ("opt", "OPTForCausalLM"),
        "flant5-dolly": ("t5", "T5ForConditionalGeneration"),
    }
    assert EngineKind.CTRANSLATE2 not in get_family("lamini-neo").engines
    assert all(EngineKind.TRANSFORMERS in family.engines for family in FAMILIES)


def test_recommended_sampling_follows_the_cards() -> None:
    lamini = get_family("lamini-gpt").recommended
    assert (lamini.do_sample, lamini.repetition_penalty) == (True, 1.5)
    dolly = get_family("flant5-dolly").recommended
    assert (dolly.do_sample, dolly.max_new_tokens) == (True, 256)
    assert get_family("opt-iml").recommended.do_sample is False


def test_get_family_is_case_insensitive_and_lists_names_when_unknown() -> None:
    assert get_family(" LaMini-GPT ") is get_family("lamini-gpt")
    with pytest.raises(FamilyResolutionError) as error:
        get_family("gpt")
    assert all(name in str(error.value) for name in family_names())


def test_checkpoint_family_from_the_twin_source_key(tmp_path: Path) -> None:
    directory = _checkpoint(
        tmp_path,
        "anything",
        model_type="t5",
        **{SOURCE_MODEL_CONFIG_KEY: "jmhessel/flant5-dolly-xxl"},
    )

    assert family_for_checkpoint(directory) is get_family("flant5-dolly")


def test_checkpoint_family_from_name_or_path(tmp_path: Path) -> None:
    directory = _checkpoint(
        tmp_path, "ckpt", model_type="gpt2", _name_or_path="MBZUAI/LaMini-Cerebras-590M"
    )

    assert family_for_checkpoint(directory) is get_family("lamini-cerebras")


@pytest.mark.parametrize(
    ("dirname", "model_type", "family_name"),
    [
        ("LaMini-Flan-T5-248M", "t5", "lamini-flan-t5"),
        ("lamini_t5_61m", "t5", "lamini-t5"),
        ("my-flant5-dolly-copy", "t5", "flant5-dolly"),
        ("LaMini-Neo-1.3B-finetuned", "gpt_neo", "lamini-neo"),
        ("checkpoint", "gpt_neo", "lamini-neo"),
        ("checkpoint", "opt", "opt-iml"),
    ],
)
def test_checkpoint_family_from_directory_name_or_unique_architecture(
    tmp_path: Path, dirname: str, model_type: str, family_name: str
) -> None:
    directory = _checkpoint(tmp_path, dirname, model_type=model_type)

    assert family_for_checkpoint(directory) is get_family(family_name)


def test_checkpoint_family_from_architectures_when_model_type_is_missing(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, "ckpt", architectures=["OPTForCausalLM"])

    assert family_for_checkpoint(directory) is get_family("opt-iml")


def test_checkpoint_in_the_hub_cache_is_named_by_its_repo_folder(tmp_path: Path) -> None:
    snapshot = tmp_path / "models--MBZUAI--LaMini-GPT-774M" / "snapshots"
    directory = _checkpoint(snapshot, "0123abcd", model_type="gpt2")

    assert family_for_checkpoint(directory) is get_family("lamini-gpt")


def test_explicit_family_wins_over_every_hint(tmp_path: Path) -> None:
    directory = _checkpoint(
        tmp_path, "LaMini-T5-61M", model_type="t5", _name_or_path="MBZUAI/LaMini-T5-61M"
    )

    assert family_for_checkpoint(directory, "flant5-dolly") is get_family("flant5-dolly")


def test_ambiguous_t5_checkpoint_is_never_guessed(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path / "dolly-experiments", "google-flan-t5-base", model_type="t5")

    with pytest.raises(FamilyResolutionError) as error:
        family_for_checkpoint(directory)

    message = str(error.value)
    assert _one_line(message)
    assert "--family" in message
    assert re.search(r"could be: lamini-t5, lamini-flan-t5, flant5-dolly", message)
    assert all(name in message for name in family_names())


def test_two_matching_name_hints_are_ambiguous(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, "lamini-t5-vs-flant5-dolly", model_type="t5")

    with pytest.raises(FamilyResolutionError, match="--family"):
        family_for_checkpoint(directory)


@pytest.mark.parametrize(
    ("config_text", "expected"),
    [
        ('{"model_type": "llama"}', "model_type 'llama' is not served"),
        ("{not json", "cannot read"),
        ("[1, 2]", "is not a JSON object"),
    ],
)
def test_unusable_config_is_a_clear_error(tmp_path: Path, config_text: str, expected: str) -> None:
    (tmp_path / "config.json").write_text(config_text, encoding="utf-8")

    with pytest.raises(FamilyResolutionError, match=expected) as error:
        family_for_checkpoint(tmp_path)
    assert _one_line(str(error.value))


def test_directory_without_config_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FamilyResolutionError, match=r"no config\.json"):
        family_for_checkpoint(tmp_path)


def test_explicit_family_of_another_architecture_is_refused(tmp_path: Path) -> None:
    directory = _checkpoint(tmp_path, "LaMini-T5-61M", model_type="t5")

    with pytest.raises(FamilyResolutionError, match="is a t5 checkpoint, but the lamini-gpt"):
        family_for_checkpoint(directory, "lamini-gpt")
