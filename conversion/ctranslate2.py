"""Hugging Face checkpoint -> CTranslate2 model directory.

A thin layer over `ctranslate2.converters.TransformersConverter`: it adds the tokenizer and the
checkpoint's own config (CTranslate2 writes a `config.json` of its own), and pads the vocabulary
when the embedding matrix is larger than the tokenizer (OPT pads its embeddings to a multiple of
8; CTranslate2 validates the vocabulary against the matrix).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core.errors import ConversionError
from app.engines.ctranslate2_engine import SOURCE_CONFIG_NAME
from conversion.common import conversion_step, save_tokenizer

# What `--quantization` may say for CTranslate2 (float16 variants only run on CUDA).
CT2_QUANTIZATIONS = ("float32", "int8", "int8_float32", "int8_float16", "float16")


class _PaddedVocabulary:
    """A tokenizer whose `get_vocab()` covers every row of the embedding matrix.

    Rows past the tokenizer's vocabulary get placeholder names; the tokenizer never produces
    their ids, so padding only makes the vocabulary and the matrix the same size.
    """

    def __init__(self, tokenizer: Any, model_vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self._model_vocab_size = model_vocab_size

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(self._tokenizer.get_vocab())
        used_ids = set(vocab.values())
        for index in range(self._model_vocab_size):
            if index not in used_ids:
                vocab[f"<lamini_unused_{index}>"] = index
        return vocab

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _converter(checkpoint_dir: Path) -> Any:
    from ctranslate2.converters import TransformersConverter

    class PaddingConverter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any):
            tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            config = json.loads((Path(model_name_or_path) / "config.json").read_text("utf-8"))
            return _PaddedVocabulary(tokenizer, int(config.get("vocab_size", 0)))

    return PaddingConverter(str(checkpoint_dir))


def convert_to_ctranslate2(checkpoint_dir: Path, out_dir: Path, quantization: str) -> None:
    """Write the CTranslate2 conversion of `checkpoint_dir` (with its tokenizer) into `out_dir`."""
    if quantization not in CT2_QUANTIZATIONS:
        raise ConversionError(
            f"CTranslate2 quantization {quantization!r} is not supported; "
            f"use one of: {', '.join(CT2_QUANTIZATIONS)}"
        )
    with conversion_step(f"converting {checkpoint_dir} to CTranslate2"):
        _converter(checkpoint_dir).convert(str(out_dir), quantization=quantization, force=True)
        save_tokenizer(checkpoint_dir, out_dir)
        (out_dir / SOURCE_CONFIG_NAME).write_bytes((checkpoint_dir / "config.json").read_bytes())
