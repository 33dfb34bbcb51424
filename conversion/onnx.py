"""Hugging Face checkpoint -> ONNX Runtime model directory (optimum export).

Encoder-decoder models become an encoder plus one merged decoder (first step and steps with past
key values in one graph), decoder-only models one decoder with past key values, so generation
reuses its cache as in transformers. `int8` adds optimum's dynamic quantisation (weights int8,
activations quantised on the fly), which needs no calibration data. The tokenizer travels with
the model.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

from app.core.errors import ConversionError
from app.core.families import Family
from app.engines.loading import load_ort_model
from conversion.common import conversion_step, save_tokenizer

ONNX_QUANTIZATIONS = ("float32", "int8")
MERGED_DECODER = "decoder_model_merged.onnx"  # the name optimum's ORT models look for first


def _merge_seq2seq_decoders(model_dir: Path) -> None:
    """Fuse the decoders without and with past key values into one graph that switches between
    them: both hold the same weights, so this halves an encoder-decoder entry."""
    from optimum.onnx import merge_decoders

    first_step, with_past = (
        model_dir / "decoder_model.onnx",
        model_dir / "decoder_with_past_model.onnx",
    )
    merge_decoders(first_step, with_past, save_path=model_dir / MERGED_DECODER, strict=False)
    first_step.unlink()
    with_past.unlink()


def _quantize_dynamic_int8(model_dir: Path) -> None:
    """Replace every ONNX graph in `model_dir` by its dynamically int8-quantised version."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = AutoQuantizationConfig.avx2(is_static=False, per_channel=False)
    with tempfile.TemporaryDirectory(dir=model_dir.parent) as scratch:
        for graph in sorted(model_dir.glob("*.onnx")):
            quantizer = ORTQuantizer.from_pretrained(model_dir, file_name=graph.name)
            quantizer.quantize(config, save_dir=scratch, file_suffix="int8")
            shutil.move(Path(scratch) / f"{graph.stem}_int8.onnx", graph)


def convert_to_onnx(checkpoint_dir: Path, out_dir: Path, family: Family, quantization: str) -> None:
    """Write the ONNX export of `checkpoint_dir` (with its tokenizer) into `out_dir`."""
    if quantization not in ONNX_QUANTIZATIONS:
        raise ConversionError(
            f"ONNX quantization {quantization!r} is not supported; "
            f"use one of: {', '.join(ONNX_QUANTIZATIONS)}"
        )
    with conversion_step(f"exporting {checkpoint_dir} to ONNX"):
        with warnings.catch_warnings():  # the torch tracer warns about every data-dependent branch
            warnings.simplefilter("ignore")
            model = load_ort_model(family, checkpoint_dir, export=True, use_cache=True)
        model.save_pretrained(str(out_dir))
        if family.is_seq2seq:
            _merge_seq2seq_decoders(out_dir)
        if quantization == "int8":
            _quantize_dynamic_int8(out_dir)
        save_tokenizer(checkpoint_dir, out_dir)
