"""`lamini-serve families`: the registry as a table (what every model gets)."""

from __future__ import annotations

import argparse
import json

from app.core.families import FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    rows = [
        {
            "family": f.name,
            "architecture": f.architecture,
            "prompt_format": f.prompt_format.name,
            "engines": [e.value for e in f.engines],
            "hub_ids": list(f.hub_ids),
        }
        for f in FAMILIES
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(
            f"{row['family']:<16} {row['architecture']:<28} {row['prompt_format']:<13} "
            f"engines={','.join(row['engines'])}  {' '.join(row['hub_ids'])}"
        )
    return 0
