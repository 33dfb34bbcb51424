"""`lamini-serve models`: what the model store holds, and whether each entry is usable.

Every entry is verified against its manifest (checksums included), so a corrupted or
half-written entry shows up here as invalid, with the reason, before a server trips over it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.commands.common import add_store_option, settings_from_args
from app.commands.convert import format_size
from model_store.store import EntryStatus, ModelStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON list")


def entry_as_json(status: EntryStatus) -> dict[str, object]:
    manifest = status.manifest
    return {
        "path": str(status.path),
        "valid": status.valid,
        "problem": status.problem,
        "size_bytes": status.size_bytes,
        "source": manifest.source if manifest else None,
        "revision": manifest.revision if manifest else None,
        "family": manifest.family if manifest else None,
        "engine": manifest.engine.value if manifest else None,
        "quantization": manifest.quantization if manifest else None,
        "created_at": manifest.created_at.isoformat() if manifest else None,
        "conversion_seconds": manifest.conversion_seconds if manifest else None,
    }


def _table_row(status: EntryStatus, root: Path) -> str:
    manifest = status.manifest
    validity = "ok" if status.valid else "INVALID"
    engine = f"{manifest.engine.value}/{manifest.quantization}" if manifest else "?"
    source = manifest.source if manifest else str(status.path.relative_to(root))
    line = f"{validity:<8} {engine:<20} {format_size(status.size_bytes):>10}  {source}"
    return line if status.valid else f"{line}\n         {status.problem}"


def run(args: argparse.Namespace) -> int:
    store = ModelStore(settings_from_args(args).store_dir)
    statuses = store.statuses()
    if args.json:
        print(json.dumps([entry_as_json(status) for status in statuses], indent=2))
        return 0
    if not statuses:
        print(f"the model store {store.root} is empty (add models with `lamini-serve convert`)")
        return 0
    print(f"model store: {store.root}")
    for status in statuses:
        print(_table_row(status, store.root))
    return 0
