"""The model store: atomic publish, one conversion under concurrency, verification on load.

The crash and concurrency scenarios run real conversions in real processes: one is killed with
SIGKILL in the middle of a conversion, two others race to convert the same model.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.core.engine_kinds import EngineKind
from app.core.errors import StoreEntryError
from model_store.store import (
    MANIFEST_NAME,
    SCHEMA_VERSION,
    EntryKey,
    ModelStore,
    sha256_file,
)

LAMINI_SERVE = Path(sys.executable).with_name("lamini-serve")
TWIN = "twin:MBZUAI/LaMini-GPT-124M@tiny"
KEY = EntryKey("example/model", "rev1", EngineKind.CTRANSLATE2, "int8")


def write_files(out_dir: Path) -> None:
    """A small stand-in conversion output with a nested file."""
    (out_dir / "model.bin").write_bytes(b"weights" * 100)
    (out_dir / "tokenizer").mkdir()
    (out_dir / "tokenizer" / "vocab.json").write_text('{"a": 0}', encoding="utf-8")


class CountingBuild:
    """A build function that counts how often the store called it."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, out_dir: Path) -> None:
        self.calls += 1
        write_files(out_dir)


def published_entries(root: Path) -> list[Path]:
    return [status.path for status in ModelStore(root).statuses()]


def test_ensure_builds_once_then_reuses_the_entry(tmp_path: Path) -> None:
    store, build = ModelStore(tmp_path), CountingBuild()

    first = store.ensure(KEY, "lamini-gpt", build)
    second = store.ensure(KEY, "lamini-gpt", build)

    assert (first.built, second.built) == (True, False)
    assert build.calls == 1
    assert first.entry.path == second.entry.path == store.entry_dir(KEY)
    assert published_entries(tmp_path) == [store.entry_dir(KEY)]


def test_manifest_describes_source_engine_and_every_file(tmp_path: Path) -> None:
    entry = ModelStore(tmp_path).ensure(KEY, "lamini-gpt", write_files).entry

    raw = json.loads((entry.path / MANIFEST_NAME).read_text(encoding="utf-8"))

    assert raw["schema_version"] == SCHEMA_VERSION
    assert (raw["source"], raw["revision"], raw["family"]) == (
        "example/model",
        "rev1",
        "lamini-gpt",
    )
    assert (raw["engine"], raw["quantization"]) == ("ct2", "int8")
    assert "ctranslate2" in raw["library_versions"]
    assert raw["conversion_seconds"] >= 0
    assert raw["created_at"]
    files = {record["path"]: record for record in raw["files"]}
    assert set(files) == {"model.bin", "tokenizer/vocab.json"}
    assert files["model.bin"]["sha256"] == sha256_file(entry.path / "model.bin")
    assert files["model.bin"]["size"] == 700


def test_force_rebuilds_a_valid_entry(tmp_path: Path) -> None:
    store, build = ModelStore(tmp_path), CountingBuild()
    store.ensure(KEY, "lamini-gpt", build)

    outcome = store.ensure(KEY, "lamini-gpt", build, force=True)

    assert outcome.built
    assert build.calls == 2
    assert published_entries(tmp_path) == [store.entry_dir(KEY)]


def test_a_failed_build_publishes_nothing_and_leaves_no_scratch(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)

    def crash(out_dir: Path) -> None:
        write_files(out_dir)
        raise RuntimeError("converter exploded")

    with pytest.raises(RuntimeError, match="converter exploded"):
        store.ensure(KEY, "lamini-gpt", crash)

    assert not store.entry_dir(KEY).exists()
    assert published_entries(tmp_path) == []
    assert list((tmp_path / ".building").iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda entry: (entry / "model.bin").write_bytes(b"tampered"), "corrupted: model.bin"),
        (
            lambda entry: (entry / "tokenizer" / "vocab.json").unlink(),
            "tokenizer/vocab.json is missing",
        ),
        (lambda entry: (entry / MANIFEST_NAME).unlink(), f"has no {MANIFEST_NAME}"),
        (
            lambda entry: (entry / MANIFEST_NAME).write_text("{not json", encoding="utf-8"),
            "unreadable",
        ),
    ],
    ids=["checksum-mismatch", "missing-file", "missing-manifest", "garbled-manifest"],
)
def test_a_damaged_entry_is_reported_clearly_and_rebuilt(
    tmp_path: Path, damage, problem: str
) -> None:
    store, build = ModelStore(tmp_path), CountingBuild()
    entry_dir = store.ensure(KEY, "lamini-gpt", build).entry.path
    damage(entry_dir)

    with pytest.raises(StoreEntryError, match=re.escape(problem)):
        store.open(KEY)
    outcome = store.ensure(KEY, "lamini-gpt", build)

    assert outcome.built
    assert build.calls == 2
    assert problem in (outcome.replaced_problem or "")
    assert store.open(KEY).manifest.files  # valid again


def test_a_manifest_from_another_schema_version_is_reported_and_rebuilt(tmp_path: Path) -> None:
    store, build = ModelStore(tmp_path), CountingBuild()
    manifest_path = store.ensure(KEY, "lamini-gpt", build).entry.path / MANIFEST_NAME
    future = {"schema_version": SCHEMA_VERSION + 1, "layout": "something new"}
    manifest_path.write_text(json.dumps(future), encoding="utf-8")

    with pytest.raises(StoreEntryError, match=f"schema version {SCHEMA_VERSION + 1}"):
        store.open(KEY)
    assert store.ensure(KEY, "lamini-gpt", build).built


def test_an_entry_converted_by_an_incompatible_runtime_is_invalid(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    manifest_path = store.ensure(KEY, "lamini-gpt", write_files).entry.path / MANIFEST_NAME
    raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    raw["library_versions"]["ctranslate2"] = "1.0.0"
    manifest_path.write_text(json.dumps(raw), encoding="utf-8")

    with pytest.raises(StoreEntryError, match=re.escape("converted with ctranslate2 1.0.0")):
        store.open(KEY)


def test_entries_differ_by_revision_engine_and_quantization(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    keys = [
        KEY,
        EntryKey("example/model", "rev2", EngineKind.CTRANSLATE2, "int8"),
        EntryKey("example/model", "rev1", EngineKind.ONNX, "int8"),
        EntryKey("example/model", "rev1", EngineKind.CTRANSLATE2, "float32"),
    ]

    for key in keys:
        store.ensure(key, "lamini-gpt", write_files)

    assert len({store.entry_dir(key) for key in keys}) == 4
    assert len(published_entries(tmp_path)) == 4


# --- real conversions in real processes ------------------------------------------------------

_KILLABLE_CONVERSION = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from app.core.engine_kinds import EngineKind
    from conversion.ctranslate2 import convert_to_ctranslate2
    from conversion.publish import entry_key
    from model_store.sources import resolve_source
    from model_store.store import ModelStore

    store_dir, twin_dir, twin = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    source = resolve_source(twin, twin_cache_dir=twin_dir)

    def convert_then_hang(out_dir):
        convert_to_ctranslate2(source.checkpoint_dir, out_dir, "int8")
        print("converted", flush=True)  # the files are written; the entry is not published
        time.sleep(600)

    key = entry_key(source, EngineKind.CTRANSLATE2, "int8")
    ModelStore(store_dir).ensure(key, source.family.name, convert_then_hang)
    """
)


def _lamini_convert(store: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(LAMINI_SERVE), "convert", TWIN, "--engine", "ct2", "--store", str(store), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_conversion_killed_midway_leaves_the_store_consistent(
    tmp_path: Path, twin_cache_dir: Path
) -> None:
    store_dir = tmp_path / "store"
    victim = subprocess.Popen(
        [sys.executable, "-c", _KILLABLE_CONVERSION, str(store_dir), str(twin_cache_dir), TWIN],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "converted"
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL

    leftovers = list((store_dir / ".building").iterdir())
    assert leftovers, "the killed conversion should have left scratch files behind"
    assert published_entries(store_dir) == []  # nothing half-written looks like an entry

    converted = _lamini_convert(store_dir)
    out, err = converted.communicate(timeout=300)

    assert converted.returncode == 0, err
    assert out.startswith("converted:")
    (entry,) = ModelStore(store_dir).statuses()
    assert entry.valid, entry.problem
    assert list((store_dir / ".building").iterdir()) == []  # scratch of the killed run is gone


@pytest.mark.slow
def test_two_concurrent_conversions_of_one_model_make_one_entry(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"

    racers = [_lamini_convert(store_dir) for _ in range(2)]
    results = [racer.communicate(timeout=300) for racer in racers]

    assert [racer.returncode for racer in racers] == [0, 0], [err for _, err in results]
    first_lines = sorted(out.splitlines()[0].split(":")[0] for out, _ in results)
    assert first_lines == ["already in the store (use --force to redo)", "converted"]
    paths = {line.split()[-1] for out, _ in results for line in out.splitlines() if "path:" in line}
    (entry,) = ModelStore(store_dir).statuses()
    assert paths == {str(entry.path)}
    assert entry.valid


def test_an_unwritable_store_is_a_clear_error(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("occupied", encoding="utf-8")

    with pytest.raises(StoreEntryError, match="cannot write to the model store"):
        ModelStore(not_a_directory / "store").ensure(KEY, "lamini-gpt", write_files)
