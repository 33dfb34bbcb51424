"""`lamini-serve convert MODEL`: convert a model for CTranslate2 or ONNX Runtime into the store.

Conversion of a full-size model takes a while and prints nothing of its own, so on a terminal
each stage shows a ticking clock on stderr; a summary on stdout says where the entry is, how big
it is and how long it took. Converting again reuses the entry.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from app.commands.common import add_quantization_option, add_store_option, settings_from_args
from app.core.engine_kinds import EngineKind
from app.core.families import family_names
from model_store.resolver import choose_engine, ensure_converted, quantization_for
from model_store.sources import resolve_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub id, local checkpoint dir or twin:<hub id>[@tiny]")
    parser.add_argument(
        "--engine",
        dest="engine",
        choices=[EngineKind.CTRANSLATE2.value, EngineKind.ONNX.value],
        help="target engine (default: the family's preferred engine)",
    )
    add_quantization_option(parser)
    add_store_option(parser)
    parser.add_argument(
        "--family", dest="family", metavar="NAME", help=f"family ({', '.join(family_names())})"
    )
    parser.add_argument(
        "--device",
        dest="device",
        choices=["auto", "cpu", "cuda"],
        help="device the model will run on (decides the default quantization)",
    )
    parser.add_argument(
        "--force", action="store_true", help="convert again even when a valid entry exists"
    )


class StageDisplay:
    """Shows the running stage and its elapsed time on a terminal, and nothing otherwise.

    Off a terminal (pipes, CI logs) the summary on stdout says everything, and an error stays
    the one line on stderr that scripts can rely on.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = stream.isatty()

    @contextmanager
    def stage(self, label: str) -> Iterator[None]:
        if not self._live:
            yield
            return
        started = time.perf_counter()
        stop = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(label, started, stop), daemon=True)
        self._show(f"{label} ...")
        ticker.start()
        finished = False
        try:
            yield
            finished = True
        finally:
            stop.set()
            ticker.join()
            elapsed = time.perf_counter() - started
            self._show(f"{label} ... done ({elapsed:.1f} s)\n" if finished else "")

    def _tick(self, label: str, started: float, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self._show(f"{label} ... {time.perf_counter() - started:.0f} s")

    def _show(self, text: str) -> None:
        """Replace the current terminal line with `text`."""
        self._stream.write("\r\033[K" + text)
        self._stream.flush()


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    display = StageDisplay(sys.stderr)
    with display.stage(f"resolving {args.model}"):
        source = resolve_source(
            args.model, twin_cache_dir=settings.twin_cache_dir, family=settings.family
        )
    # a store holds converted engines: auto means the family's converted engine here, even
    # where auto serves with the continuous engine (which runs the checkpoint as it is)
    engine = (
        source.family.preferred_engine
        if settings.engine == "auto"
        else choose_engine(source.family, settings.engine)
    )
    quantization = quantization_for(engine, settings)
    with display.stage(f"preparing the {engine.value}/{quantization} entry"):
        outcome = ensure_converted(source, engine, settings, force=args.force)
    if outcome.replaced_problem:
        print(f"replaced a broken entry: {outcome.replaced_problem}", file=sys.stderr)
    manifest = outcome.entry.manifest
    status = "converted" if outcome.built else "already in the store (use --force to redo)"
    print(f"{status}: {args.model}")
    print(f"  engine:       {manifest.engine.value} ({manifest.quantization})")
    print(f"  family:       {manifest.family}")
    print(f"  size:         {format_size(manifest.size_bytes)}")
    print(f"  convert time: {manifest.conversion_seconds:.1f} s")
    print(f"  path:         {outcome.entry.path}")
    return 0
