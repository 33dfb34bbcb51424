"""Opening checkpoint files with transformers, with one clear error when they are unusable.

transformers reports a broken, incomplete or foreign checkpoint with whichever exception its
code path hits first; every engine and command turns those into one `ModelSourceError` here.
Remote code is never trusted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.core.errors import ModelSourceError
from app.core.families import Family

_LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError)


@contextlib.contextmanager
def checkpoint_load_errors(checkpoint_dir: Path, family: Family, what: str) -> Iterator[None]:
    """Turn transformers' loading exceptions into a `ModelSourceError` naming `what` failed."""
    try:
        yield
    except _LOAD_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelSourceError(
            f"cannot load the {family.name} checkpoint in {checkpoint_dir} with {what}: {reason}"
        ) from None


def load_tokenizer(checkpoint_dir: Path, family: Family) -> Any:
    """The checkpoint's own tokenizer (fast when available)."""
    from transformers import AutoTokenizer

    with checkpoint_load_errors(checkpoint_dir, family, "transformers' AutoTokenizer"):
        return AutoTokenizer.from_pretrained(str(checkpoint_dir), trust_remote_code=False)
