"""Opening checkpoint files with transformers or optimum, with one clear error when unusable.

transformers reports a broken, incomplete or foreign checkpoint with whichever exception its
code path hits first; every engine and command turns those into one `ModelSourceError` here.
Remote code is never trusted.
"""

from __future__ import annotations

import contextlib
import tempfile
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


@contextlib.contextmanager
def _path_without_at(directory: Path) -> Iterator[Path]:
    """`directory`, or a symlink to it whose path has no '@': optimum reads `name@revision`
    into every model id, local paths included."""
    if "@" not in str(directory.resolve()):
        yield directory
        return
    with tempfile.TemporaryDirectory() as scratch:
        link = Path(scratch) / "model"
        link.symlink_to(directory.resolve(), target_is_directory=True)
        yield link


def ort_model_class(family: Family) -> type:
    """The optimum ORT model class that runs `family` (export and inference alike)."""
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

    return ORTModelForSeq2SeqLM if family.is_seq2seq else ORTModelForCausalLM


def load_ort_model(family: Family, directory: Path, **options: Any) -> Any:
    """optimum's ORT model for `family` from a local directory (export and inference alike)."""
    with _path_without_at(directory) as path:
        return ort_model_class(family).from_pretrained(str(path), local_files_only=True, **options)
