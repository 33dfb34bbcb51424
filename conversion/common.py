"""What every converter does alike: report library failures as one line, ship the tokenizer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.errors import ConversionError


@contextmanager
def conversion_step(action: str) -> Iterator[None]:
    """Turn a converter library's failure (bad checkpoint, unsupported layer, full disk) into a
    ConversionError that names `action` and the first line of the library's message."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConversionError(f"{action} failed: {reason}") from None


def save_tokenizer(checkpoint_dir: Path, out_dir: Path) -> None:
    """Write the checkpoint's tokenizer next to the converted model: engines load it from there,
    so a store entry is usable without its source."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(checkpoint_dir)).save_pretrained(str(out_dir))
