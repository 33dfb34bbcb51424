"""`lamini-serve twin MODEL_ID OUT_DIR`: write a random-weight twin of a zoo model.

Twins let everything run offline: the same class, sizes, vocabulary and special tokens as the
real checkpoint, random weights (see `model_store/twins.py`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from app.commands.common import non_negative_int
from app.core.errors import ModelSourceError
from model_store.twins import TwinSize, build_twin_atomically


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_id", metavar="MODEL_ID", help="a hub id (`lamini-serve families`)")
    parser.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="new or empty directory")
    parser.add_argument(
        "--size",
        choices=[size.value for size in TwinSize],
        default=TwinSize.FULL.value,
        help="full = the real sizes, tiny = a few small layers for tests (default: full)",
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, metavar="N", help="weights seed (default 0)"
    )


def run(args: argparse.Namespace) -> int:
    out_dir: Path = args.out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ModelSourceError(f"{out_dir} already exists and is not an empty directory")
    size = TwinSize(args.size)
    try:
        build_twin_atomically(args.model_id, out_dir, size=size, seed=args.seed)
    except OSError as exc:
        raise ModelSourceError(f"cannot write the twin to {out_dir}: {exc}") from None
    print(f"wrote a {size.value} twin of {args.model_id} (seed {args.seed}) to {out_dir}")
    return 0
