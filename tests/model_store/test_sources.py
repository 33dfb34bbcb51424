"""Model sources and loading: twin:, local directories and hub ids (offline) resolve to a
checkpoint and a family, or fail with one clear message."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from app.core.engine_kinds import EngineKind
from app.core.errors import EngineUnavailableError, ModelSourceError
from app.core.families import get_family
from app.engines.transformers_engine import TransformersEngine
from app.settings import Settings
from model_store.resolver import choose_engine, load_model
from model_store.sources import TwinSpec, parse_twin, resolve_family, resolve_source
from model_store.twins import TwinSize


def test_load_model_opens_a_twin_on_the_transformers_engine(twin_cache_dir: Path) -> None:
    settings = Settings(twin_cache_dir=twin_cache_dir, device="cpu", engine="transformers")

    loaded = load_model("twin:MBZUAI/LaMini-Flan-T5-77M@tiny", settings)

    assert isinstance(loaded.engine, TransformersEngine)
    assert loaded.source.family.name == "lamini-flan-t5"
    assert loaded.engine.info.kind is EngineKind.TRANSFORMERS
    assert loaded.load_seconds > 0
    assert loaded.convert_seconds is None


def test_auto_engine_is_the_family_preferred_one() -> None:
    assert choose_engine(get_family("lamini-t5"), "auto") is EngineKind.CTRANSLATE2
    assert choose_engine(get_family("flant5-dolly"), "auto", "cpu") is EngineKind.CTRANSLATE2
    assert choose_engine(get_family("lamini-neo"), "auto") is EngineKind.ONNX
    assert choose_engine(get_family("opt-iml"), "auto", "cpu") is EngineKind.CTRANSLATE2


@pytest.mark.parametrize("family", ["lamini-gpt", "lamini-cerebras", "lamini-flan-t5"])
def test_auto_runs_the_measured_families_on_the_continuous_engine_on_cpus(family: str) -> None:
    assert choose_engine(get_family(family), "auto", "cpu") is EngineKind.CONTINUOUS
    assert choose_engine(get_family(family), "auto", "cpu", "float32") is EngineKind.CONTINUOUS
    assert choose_engine(get_family(family), "auto", "cuda") is EngineKind.CTRANSLATE2
    # a quantization only CTranslate2 computes in keeps the converted engine
    only_ct2 = choose_engine(get_family(family), "auto", "cpu", "int8_float32")
    assert only_ct2 is EngineKind.CTRANSLATE2


def test_auto_falls_back_to_the_converted_engine_without_torch(monkeypatch) -> None:
    """The slim runtime image has no torch: there auto serves the store's CTranslate2 entry."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch" else real_find_spec(name, *args),
    )

    assert choose_engine(get_family("lamini-gpt"), "auto", "cpu") is EngineKind.CTRANSLATE2


def test_engine_the_family_cannot_use_is_refused() -> None:
    with pytest.raises(EngineUnavailableError, match="ct2 engine cannot run lamini-neo"):
        choose_engine(get_family("lamini-neo"), "ct2")


def test_twin_name_builds_once_into_the_cache(tmp_path: Path) -> None:
    first = resolve_source("twin:mbzuai/lamini-neo-125m@tiny", twin_cache_dir=tmp_path)
    built_at = (first.checkpoint_dir / "config.json").stat().st_mtime_ns

    again = resolve_source("twin:MBZUAI/LaMini-Neo-125M@tiny", twin_cache_dir=tmp_path)

    assert again.checkpoint_dir == first.checkpoint_dir
    assert (again.checkpoint_dir / "config.json").stat().st_mtime_ns == built_at
    assert first.family.name == "lamini-neo"
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [
        first.checkpoint_dir.name
    ]


def test_twin_names_default_to_full_size() -> None:
    assert parse_twin("twin:MBZUAI/LaMini-GPT-124M") == TwinSpec(
        "MBZUAI/LaMini-GPT-124M", TwinSize.FULL
    )
    assert parse_twin("twin:MBZUAI/LaMini-GPT-124M@tiny") == TwinSpec(
        "MBZUAI/LaMini-GPT-124M", TwinSize.TINY
    )
    assert parse_twin("MBZUAI/LaMini-GPT-124M") is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("twin:MBZUAI/LaMini-GPT-2B", "no twin for 'MBZUAI/LaMini-GPT-2B'"),
        ("twin:MBZUAI/LaMini-GPT-124M@small", "twin size must be 'tiny' or 'full'"),
    ],
)
def test_bad_twin_names_are_clear_errors(name: str, message: str) -> None:
    with pytest.raises(ModelSourceError, match=re.escape(message)):
        parse_twin(name)


def test_local_directory_resolves_with_its_family(tiny_twin: Callable[[str], Path]) -> None:
    directory = tiny_twin("facebook/opt-iml-1.3b")

    source = resolve_source(str(directory), twin_cache_dir=directory.parent)

    assert source.checkpoint_dir == directory.resolve()
    assert source.family.name == "opt-iml"


def test_explicit_family_overrides_a_twin(tiny_twin: Callable[[str], Path]) -> None:
    directory = tiny_twin("MBZUAI/LaMini-T5-61M")

    source = resolve_source(str(directory), twin_cache_dir=directory.parent, family="flant5-dolly")

    assert source.family.name == "flant5-dolly"


@pytest.mark.parametrize("name", ["./missing", "/no/such/checkpoint", "a/b/c", "plainword"])
def test_missing_directory_is_not_mistaken_for_a_hub_id(tmp_path: Path, name: str) -> None:
    with pytest.raises(ModelSourceError, match="no such directory"):
        resolve_source(name, twin_cache_dir=tmp_path)


def test_hub_id_offline_explains_the_way_out(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as error:
        resolve_source("MBZUAI/LaMini-Flan-T5-248M", twin_cache_dir=tmp_path)

    message = str(error.value)
    assert "\n" not in message
    assert "huggingface-cli download MBZUAI/LaMini-Flan-T5-248M" in message
    assert "twin:MBZUAI/LaMini-Flan-T5-248M@tiny" in message


def test_resolve_family_needs_no_checkpoint_for_known_names(tmp_path: Path) -> None:
    assert resolve_family("facebook/opt-iml-1.3b", twin_cache_dir=tmp_path).name == "opt-iml"
    assert resolve_family("twin:MBZUAI/LaMini-GPT-774M", twin_cache_dir=tmp_path).name == (
        "lamini-gpt"
    )
    assert resolve_family("anything", twin_cache_dir=tmp_path, family="lamini-t5").name == (
        "lamini-t5"
    )
    assert list(tmp_path.iterdir()) == []


def test_resolve_family_of_an_unknown_hub_id_offline_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="could not fetch it"):
        resolve_family("someone/model", twin_cache_dir=tmp_path)
