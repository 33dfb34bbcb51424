"""`lamini-serve convert`, `models` and `generate --backend ct2|onnx` on tiny twins of every
family, as a user runs them: convert once, generate from the store, see what the store holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.core.engine_kinds import EngineKind
from app.core.families import FAMILIES, get_family
from conversion.publish import QUANTIZATIONS
from tests.support.cli import assert_one_line_error, lamini_serve, run_in_process
from tests.support.twins import FAMILY_TWINS

CONVERTED_CASES = [
    pytest.param(family, kind.value, id=f"{family}-{kind.value}")
    for family in FAMILY_TWINS
    for kind in (EngineKind.CTRANSLATE2, EngineKind.ONNX)
    if kind in get_family(family).engines
]


def _twin(family: str) -> str:
    return f"twin:{FAMILY_TWINS[family]}@tiny"


def _generate_json(capsys: pytest.CaptureFixture[str], model: str, *flags: str) -> dict:
    result = run_in_process(
        capsys,
        "generate",
        model,
        "Name three colours.",
        "--greedy",
        "--max-new-tokens",
        "6",
        "--json",
        *flags,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _models(capsys: pytest.CaptureFixture[str], store: Path) -> list[dict]:
    result = run_in_process(capsys, "models", "--store", str(store), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_family_has_a_preferred_engine_that_converts_it() -> None:
    for family in FAMILIES:
        assert family.preferred_engine in QUANTIZATIONS, family.name
        assert "float32" in QUANTIZATIONS[family.preferred_engine]
    assert get_family("lamini-neo").preferred_engine is EngineKind.ONNX
    assert get_family("lamini-gpt").preferred_engine is EngineKind.CTRANSLATE2


@pytest.mark.parametrize(("family", "engine"), CONVERTED_CASES)
def test_convert_then_generate_matches_the_transformers_backend(
    capsys: pytest.CaptureFixture[str], family: str, engine: str
) -> None:
    model = _twin(family)

    converted = run_in_process(
        capsys, "convert", model, "--engine", engine, "--quantization", "float32"
    )
    answer = _generate_json(capsys, model, "--backend", engine, "--quantization", "float32")
    reference = _generate_json(capsys, model, "--backend", "transformers")

    assert converted.returncode == 0, converted.stderr
    summary = dict(line.strip().split(":", 1) for line in converted.stdout.splitlines()[1:])
    assert summary["engine"].strip() == f"{engine} (float32)"
    assert summary["family"].strip() == family
    assert Path(summary["path"].strip()).is_dir()
    assert summary["size"].strip().endswith("MiB")
    assert (answer["engine"], answer["quantization"]) == (engine, "float32")
    assert [t["id"] for t in answer["tokens"]] == [t["id"] for t in reference["tokens"]]
    assert answer["tidied_text"] == reference["tidied_text"]


def test_generate_converts_on_first_use_and_reuses_the_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    flags = ("--backend", "ct2", "--store", str(store))

    first = _generate_json(capsys, _twin("lamini-cerebras"), *flags)
    second = _generate_json(capsys, _twin("lamini-cerebras"), *flags)
    (entry,) = _models(capsys, store)

    assert first["timings"]["convert_seconds"] > 0
    assert second["timings"]["convert_seconds"] is None
    assert first["tokens"] == second["tokens"]
    assert first["quantization"] == "int8"  # the CPU default for CTranslate2
    assert entry["valid"] is True
    assert entry["problem"] is None
    assert (entry["engine"], entry["quantization"], entry["family"]) == (
        "ct2",
        "int8",
        "lamini-cerebras",
    )
    assert entry["source"] == _twin("lamini-cerebras")
    assert entry["size_bytes"] > 0


@pytest.mark.parametrize(("family", "engine"), [("lamini-neo", "onnx"), ("opt-iml", "ct2")])
def test_the_default_backend_is_the_familys_preferred_engine(
    capsys: pytest.CaptureFixture[str], family: str, engine: str
) -> None:
    answer = _generate_json(capsys, _twin(family))

    assert answer["engine"] == engine


def test_a_corrupted_entry_shows_invalid_and_is_rebuilt_on_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    model = _twin("lamini-t5")
    flags = ("--backend", "ct2", "--quantization", "int8", "--store", str(store))
    before = _generate_json(capsys, model, *flags)
    (entry,) = _models(capsys, store)
    weights = Path(entry["path"]) / "model.bin"
    weights.write_bytes(weights.read_bytes()[:-100])

    (broken,) = _models(capsys, store)
    after = _generate_json(capsys, model, *flags)
    (rebuilt,) = _models(capsys, store)

    assert broken["valid"] is False
    assert "model.bin" in broken["problem"]
    assert "checksum" in broken["problem"]
    assert after["timings"]["convert_seconds"] is not None  # converted again
    assert after["tokens"] == before["tokens"]
    assert rebuilt["valid"] is True


def test_convert_reports_and_replaces_a_broken_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    args = ("convert", _twin("lamini-gpt"), "--engine", "ct2", "--store", str(store))
    run_in_process(capsys, *args)
    (entry,) = _models(capsys, store)
    (Path(entry["path"]) / "vocabulary.json").unlink()

    result = run_in_process(capsys, *args)

    assert result.returncode == 0
    assert result.stdout.startswith("converted:")
    assert "replaced a broken entry" in result.stderr
    assert "vocabulary.json" in result.stderr
    assert _models(capsys, store)[0]["valid"] is True


def test_models_on_an_empty_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    listing = run_in_process(capsys, "models", "--store", str(tmp_path / "nothing"))

    assert listing.returncode == 0
    assert "empty" in listing.stdout
    assert _models(capsys, tmp_path / "nothing") == []


def test_models_table_marks_invalid_entries(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert lamini_serve("convert", _twin("lamini-gpt"), "--store", str(store)).returncode == 0
    entry = next(store.glob("*/ct2-int8"))
    (entry / "manifest.json").write_text('{"schema_version": 99}', encoding="utf-8")

    listing = lamini_serve("models", "--store", str(store))

    assert listing.returncode == 0, listing.stderr
    assert "INVALID" in listing.stdout
    assert "schema version 99" in listing.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("convert", _twin("lamini-neo"), "--engine", "ct2"), ("ct2", "lamini-neo", "onnx")),
        (
            ("convert", _twin("lamini-gpt"), "--engine", "onnx", "--quantization", "float16"),
            ("float16", "onnx", "float32, int8"),
        ),
        (
            (
                "generate",
                _twin("lamini-gpt"),
                "hi",
                "--backend",
                "transformers",
                "--quantization",
                "int8",
            ),
            ("transformers", "float32"),
        ),
        (("generate", _twin("lamini-neo"), "hi", "--backend", "ct2"), ("ct2", "lamini-neo")),
    ],
    ids=["ct2-cannot-convert-gpt-neo", "onnx-has-no-float16", "transformers-is-float32", "neo-ct2"],
)
def test_impossible_requests_fail_with_one_clear_line(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    assert_one_line_error(run_in_process(capsys, *args), *fragments)


def test_two_spellings_of_one_model_share_an_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = ("--store", str(tmp_path / "store"), "--engine", "ct2")

    first = run_in_process(capsys, "convert", "twin:MBZUAI/LaMini-GPT-124M@tiny", *store)
    second = run_in_process(capsys, "convert", "twin:mbzuai/lamini-gpt-124m@tiny", *store)

    assert first.stdout.startswith("converted:")
    assert second.stdout.startswith("already in the store")
    assert len(_models(capsys, tmp_path / "store")) == 1


def test_onnx_works_from_a_store_path_with_an_at_sign(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """optimum reads `name@revision` into local paths; the store must not trip over it."""
    store = ("--store", str(tmp_path / "models@v2"))

    answer = _generate_json(capsys, _twin("lamini-neo"), "--backend", "onnx", *store)

    assert answer["engine"] == "onnx"
    assert answer["tokens"]
