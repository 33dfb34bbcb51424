"""Model sources: turn what a user typed (hub id, local directory, `twin:` name) into a local
Hugging Face checkpoint directory and its family.

Hub ids go through `huggingface_hub` so `HF_HOME`, `HF_HUB_OFFLINE` and tokens behave as users
expect; when the hub cannot be reached the error says what was tried and how to get going
offline. Remote code is never trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from app.core.errors import ModelSourceError
from app.core.families import (
    Family,
    canonical_hub_id,
    family_for_checkpoint,
    family_for_hub_id,
    get_family,
)
from model_store.twins import TwinSize, build_twin_atomically

TWIN_PREFIX = "twin:"

# What a checkpoint needs; weights in safetensors when the repo has them, else PyTorch bins.
_CHECKPOINT_PATTERNS = [
    "*.json",
    "*.model",
    "*.txt",
    "*.safetensors",
]
_LEGACY_WEIGHT_PATTERNS = ["pytorch_model*.bin"]


@dataclass(frozen=True)
class ModelSource:
    """A model ready to load or convert: where its files are and which family it is."""

    name: str
    checkpoint_dir: Path
    family: Family
    revision: str | None


@dataclass(frozen=True)
class TwinSpec:
    hub_id: str
    size: TwinSize
    seed: int = 0

    @property
    def cache_name(self) -> str:
        # No '@': transformers warns about checkpoint folder names that are not identifiers.
        return f"{self.hub_id.replace('/', '--')}--{self.size.value}-seed{self.seed}"


def parse_twin(name: str) -> TwinSpec | None:
    """`twin:<hub id>[@tiny|@full]` -> TwinSpec; anything else -> None."""
    if not name.startswith(TWIN_PREFIX):
        return None
    body = name.removeprefix(TWIN_PREFIX)
    hub_id, _, size = body.partition("@")
    known = canonical_hub_id(hub_id)
    if known is None:
        raise ModelSourceError(
            f"{name!r}: no twin for {hub_id!r}; use twin:<hub id> with a LaMini-zoo id, "
            "e.g. twin:MBZUAI/LaMini-Flan-T5-248M@tiny (`lamini-serve families` lists them)"
        )
    try:
        twin_size = TwinSize(size or TwinSize.FULL.value)
    except ValueError:
        raise ModelSourceError(f"{name!r}: twin size must be 'tiny' or 'full'") from None
    return TwinSpec(known, twin_size)


def ensure_twin(spec: TwinSpec, cache_dir: Path) -> Path:
    """Build the twin once into the cache (safe when several processes start together)."""
    target = cache_dir / spec.cache_name
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{spec.cache_name}.lock")):
        if not (target / "config.json").is_file():
            build_twin_atomically(spec.hub_id, target, spec.size, spec.seed)
    return target


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).exists()


def _download(hub_id: str, revision: str | None) -> tuple[Path, str | None]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    known = canonical_hub_id(hub_id)
    twin_hint = (
        f"or try the offline twin `twin:{known}@tiny`"
        if known
        else "or try an offline twin such as `twin:MBZUAI/LaMini-Flan-T5-248M@tiny` "
        "(`lamini-serve families` lists the ids)"
    )
    fix = (
        f"download it on a connected machine with `huggingface-cli download {hub_id} "
        f"--local-dir DIR`, copy DIR here and pass DIR instead of the hub id; {twin_hint}"
    )
    try:
        patterns = list(_CHECKPOINT_PATTERNS)
        try:
            files = HfApi().list_repo_files(hub_id, revision=revision)
            if not any(f.endswith(".safetensors") for f in files):
                patterns += _LEGACY_WEIGHT_PATTERNS
        except (LocalEntryNotFoundError, OSError):
            patterns += _LEGACY_WEIGHT_PATTERNS  # offline: take whatever the cache holds
        path = snapshot_download(hub_id, revision=revision, allow_patterns=patterns)
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelSourceError(
            f"{hub_id}: not found on the Hugging Face hub or access denied "
            f"({type(exc).__name__}); check the id, or set HF_TOKEN for a gated model"
        ) from None
    except RevisionNotFoundError:
        raise ModelSourceError(f"{hub_id}: revision {revision!r} does not exist") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(
            f"{hub_id}: could not fetch it from the Hugging Face hub or the local HF cache "
            f"({reason}); {fix}"
        ) from None
    snapshot = Path(path)
    return snapshot, snapshot.name if snapshot.parent.name == "snapshots" else revision


def resolve_source(
    name: str,
    *,
    twin_cache_dir: Path,
    family: str | None = None,
    revision: str | None = None,
) -> ModelSource:
    """Find (downloading or building if needed) the checkpoint `name` refers to."""
    twin = parse_twin(name)
    if twin is not None:
        directory = ensure_twin(twin, twin_cache_dir)
        resolved = family_for_checkpoint(directory, family)
        return ModelSource(name, directory, resolved, revision=twin.cache_name)
    expanded = Path(name).expanduser()
    if expanded.is_dir():
        return ModelSource(name, expanded.resolve(), family_for_checkpoint(expanded, family), None)
    if _looks_like_path(name):
        raise ModelSourceError(
            f"{name}: no such directory, and it is not a hub id of the form owner/name"
        )
    # The hub matches ids case-insensitively, its local cache does not: use the registry spelling.
    directory, resolved_revision = _download(canonical_hub_id(name) or name, revision)
    explicit = get_family(family) if family else None
    resolved = explicit or family_for_hub_id(name) or family_for_checkpoint(directory)
    return ModelSource(name, directory, resolved, resolved_revision)


def resolve_family(name: str, *, twin_cache_dir: Path, family: str | None = None) -> Family:
    """The family of `name`, without downloading or building anything the registry knows.

    Formatting a prompt needs only the family, so a known hub id or twin works offline here
    even when its checkpoint is not on this machine.
    """
    if family:
        return get_family(family)
    twin = parse_twin(name)
    if twin is None and Path(name).expanduser().is_dir():
        return family_for_checkpoint(Path(name).expanduser())
    known = family_for_hub_id(twin.hub_id if twin else name)
    if known is not None:
        return known
    return resolve_source(name, twin_cache_dir=twin_cache_dir).family
