"""The model store: converted models on disk, one verified entry per model/engine/quantisation.

Layout (everything under one root, so a rename is always within one filesystem)::

    <root>/<model slug>--<revision slug>/<engine>-<quantization>/   a published entry
        manifest.json                                              written last, lists every file
        ...converted files...
    <root>/.building/<entry id>.<random>/                          scratch, never read
    <root>/.locks/<entry id>.lock                                  one lock per entry

An entry is built in `.building/` and published by renaming the finished directory into place,
so a reader sees either nothing or a complete entry; a conversion killed half-way leaves only
scratch that the next build of the same entry removes. The manifest records a sha256 for every
file, so a truncated or edited file is caught when the entry is opened, never served.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel, ValidationError

from app.core.engine_kinds import EngineKind
from app.core.errors import StoreEntryError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
_BUILDING_DIR = ".building"
_LOCKS_DIR = ".locks"
_HASH_CHUNK = 1 << 20


class FileRecord(BaseModel):
    """One file of an entry, relative to the entry directory."""

    path: str
    size: int
    sha256: str


class Manifest(BaseModel):
    """What an entry is, where it came from and how to check it (stored as manifest.json)."""

    schema_version: int
    source: str
    revision: str
    family: str
    engine: EngineKind
    quantization: str
    library_versions: dict[str, str]
    files: list[FileRecord]
    created_at: datetime
    conversion_seconds: float

    @property
    def size_bytes(self) -> int:
        return sum(record.size for record in self.files)


@dataclass(frozen=True)
class EntryKey:
    """Identifies an entry: the source model at one revision, converted for one engine."""

    source: str
    revision: str
    engine: EngineKind
    quantization: str

    @property
    def relative_dir(self) -> Path:
        model = f"{_slug(self.source)}--{_slug(self.revision)}"
        return Path(model) / f"{self.engine.value}-{_slug(self.quantization)}"

    @property
    def entry_id(self) -> str:
        """A flat, filesystem-safe name for this entry (locks and scratch directories)."""
        return "__".join(self.relative_dir.parts)


@dataclass(frozen=True)
class StoreEntry:
    """A published, verified entry ready to load."""

    path: Path
    manifest: Manifest


@dataclass(frozen=True)
class EntryStatus:
    """What `lamini-serve models` shows for one directory of the store."""

    path: Path
    manifest: Manifest | None
    problem: str | None
    size_bytes: int

    @property
    def valid(self) -> bool:
        return self.problem is None


BuildFunction = Callable[[Path], None]
"""Writes a converted model into the (empty, existing) directory it is given."""


@dataclass(frozen=True)
class BuildOutcome:
    """The entry `ModelStore.ensure` returns, and whether this call had to build it."""

    entry: StoreEntry
    built: bool
    replaced_problem: str | None = None


def _slug(text: str) -> str:
    """Filesystem-safe rendering of a model id, path or revision (keeps it recognisable)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-.")
    if readable != text.replace("/", "--") or len(readable) > 80:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        readable = f"{readable[-60:].lstrip('-.')}-{digest}"
    return readable or "model"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def directory_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _file_records(directory: Path) -> list[FileRecord]:
    return [
        FileRecord(
            path=file.relative_to(directory).as_posix(),
            size=file.stat().st_size,
            sha256=sha256_file(file),
        )
        for file in sorted(directory.rglob("*"))
        if file.is_file() and file.name != MANIFEST_NAME
    ]


def _installed_version(library: str) -> str | None:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major(version: str) -> str:
    return version.split(".", 1)[0]


def read_manifest(entry_dir: Path) -> Manifest:
    """The entry's manifest; StoreEntryError says why it cannot be used.

    The schema version is checked before the fields, so a manifest written by another version
    of lamini-serve is reported as such rather than as a confusing validation error.
    """
    path = entry_dir / MANIFEST_NAME
    if not path.is_file():
        raise StoreEntryError(f"store entry {entry_dir} is incomplete: it has no {MANIFEST_NAME}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreEntryError(
            f"store entry {entry_dir} has an unreadable {MANIFEST_NAME} ({exc})"
        ) from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise StoreEntryError(
            f"store entry {entry_dir} has a manifest of schema version {version!r}; this "
            f"lamini-serve reads version {SCHEMA_VERSION}"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise StoreEntryError(
            f"store entry {entry_dir} has an invalid {MANIFEST_NAME} ({where}: {first['msg']})"
        ) from None


def verify_entry(entry_dir: Path) -> Manifest:
    """Check an entry against its manifest: runtime version, every file present, checksums.

    Raises StoreEntryError naming the first problem found.
    """
    manifest = read_manifest(entry_dir)
    runtime = RUNTIME_LIBRARIES.get(manifest.engine)
    if runtime is not None and runtime in manifest.library_versions:
        built_with = manifest.library_versions[runtime]
        installed = _installed_version(runtime)
        if installed is None or _major(installed) != _major(built_with):
            raise StoreEntryError(
                f"store entry {entry_dir} was converted with {runtime} {built_with}, which the "
                f"installed {runtime} {installed or '(none)'} cannot load"
            )
    for record in manifest.files:
        file = entry_dir / record.path
        if not file.is_file():
            raise StoreEntryError(
                f"store entry {entry_dir} is incomplete: {record.path} is missing"
            )
        if file.stat().st_size != record.size or sha256_file(file) != record.sha256:
            raise StoreEntryError(
                f"store entry {entry_dir} is corrupted: {record.path} does not match the "
                "checksum in its manifest"
            )
    return manifest


@dataclass(frozen=True)
class ModelStore:
    """A store root directory; see the module docstring for the layout and the guarantees."""

    root: Path

    def entry_dir(self, key: EntryKey) -> Path:
        return self.root / key.relative_dir

    def open(self, key: EntryKey) -> StoreEntry:
        """The verified entry for `key`; StoreEntryError if it is missing or broken."""
        path = self.entry_dir(key)
        if not path.exists():
            raise StoreEntryError(f"no store entry for {key.source} ({key.relative_dir})")
        return StoreEntry(path, verify_entry(path))

    def ensure(
        self, key: EntryKey, family: str, build: BuildFunction, *, force: bool = False
    ) -> BuildOutcome:
        """The entry for `key`, building and publishing it first when it is missing or broken.

        Holds the entry's lock throughout, so concurrent callers (threads or processes) asking
        for the same entry do one conversion and all get its result. A broken entry is replaced
        and its problem is reported in the outcome. `force` rebuilds even a valid entry.
        """
        try:
            locks = self.root / _LOCKS_DIR
            locks.mkdir(parents=True, exist_ok=True)
            with FileLock(str(locks / f"{key.entry_id}.lock")):
                problem: str | None = None
                if self.entry_dir(key).exists() and not force:
                    try:
                        return BuildOutcome(self.open(key), built=False)
                    except StoreEntryError as exc:
                        problem = str(exc)
                self._remove_scratch(key)
                return BuildOutcome(self._build(key, family, build), True, problem)
        except OSError as exc:  # unwritable store, full disk
            raise StoreEntryError(
                f"cannot write to the model store {self.root}: {exc.strerror or exc}; "
                "choose another directory with --store or LAMINI_STORE_DIR"
            ) from None

    def _scratch_root(self) -> Path:
        scratch = self.root / _BUILDING_DIR
        scratch.mkdir(parents=True, exist_ok=True)
        return scratch

    def _remove_scratch(self, key: EntryKey) -> None:
        """Remove what killed builds of `key` left behind (only called under its lock)."""
        for leftover in self._scratch_root().glob(f"{key.entry_id}.*"):
            shutil.rmtree(leftover, ignore_errors=True)

    def _build(self, key: EntryKey, family: str, build: BuildFunction) -> StoreEntry:
        scratch = Path(tempfile.mkdtemp(prefix=f"{key.entry_id}.", dir=self._scratch_root()))
        try:
            started = time.perf_counter()
            build(scratch)
            manifest = Manifest(
                schema_version=SCHEMA_VERSION,
                source=key.source,
                revision=key.revision,
                family=family,
                engine=key.engine,
                quantization=key.quantization,
                library_versions=_library_versions(key.engine),
                files=_file_records(scratch),
                created_at=datetime.now(timezone.utc),
                conversion_seconds=round(time.perf_counter() - started, 3),
            )
            _write_durably(scratch / MANIFEST_NAME, manifest.model_dump_json(indent=2))
            target = self.entry_dir(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                target.rename(scratch.with_name(scratch.name + ".replaced"))
            scratch.rename(target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.rmtree(scratch.with_name(scratch.name + ".replaced"), ignore_errors=True)
        return StoreEntry(target, manifest)

    def statuses(self) -> list[EntryStatus]:
        """Every entry directory of the store with its validity (for `lamini-serve models`)."""
        return [self._status(path) for path in self._entry_dirs()]

    def _entry_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for model_dir in sorted(self.root.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            yield from sorted(path for path in model_dir.iterdir() if path.is_dir())

    @staticmethod
    def _status(path: Path) -> EntryStatus:
        try:
            size = directory_size(path)
            return EntryStatus(path, verify_entry(path), None, size)
        except OSError as exc:  # an unreadable entry is listed as such, not a crash
            return EntryStatus(path, None, f"store entry {path} cannot be read: {exc}", 0)
        except StoreEntryError as exc:
            try:
                manifest: Manifest | None = read_manifest(path)
            except StoreEntryError:
                manifest = None
            return EntryStatus(path, manifest, str(exc), size)


# The library that loads each engine's entries: a different major version cannot read them.
RUNTIME_LIBRARIES: dict[EngineKind, str] = {
    EngineKind.CTRANSLATE2: "ctranslate2",
    EngineKind.ONNX: "onnxruntime",
}
_CONVERSION_LIBRARIES = ("transformers", "torch", "optimum", "optimum-onnx")


def _library_versions(engine: EngineKind) -> dict[str, str]:
    names = (
        [RUNTIME_LIBRARIES[engine], *_CONVERSION_LIBRARIES]
        if engine in RUNTIME_LIBRARIES
        else list(_CONVERSION_LIBRARIES)
    )
    return {name: version for name in names if (version := _installed_version(name))}


def _write_durably(path: Path, text: str) -> None:
    """Write and fsync, so a published manifest is on disk before the rename that publishes it."""
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
