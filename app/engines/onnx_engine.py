"""The ONNX Runtime engine: optimum's ORT models, driven exactly like the transformers engine.

optimum's `ORTModelForCausalLM` / `ORTModelForSeq2SeqLM` implement transformers' generation
interface on top of ONNX Runtime sessions, so batching, padding, sampling, log-probs and the
per-step tracker feed are inherited from `TransformersEngine`; only loading differs. This is
the engine for GPT-Neo, which CTranslate2 cannot convert.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import torch
from transformers import AutoTokenizer

from app.engines.base import EngineInfo, limits_from_config
from app.engines.transformers_engine import TransformersEngine
from app.errors import ModelSourceError
from app.families import EngineKind, Family
from conversion.onnx import load_ort_model

_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"


def resolve_onnx_provider(device: str) -> str:
    """`auto` means the CUDA provider when this onnxruntime build has it, else the CPU one."""
    has_cuda = _CUDA_PROVIDER in onnxruntime.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise ModelSourceError(
            "device cuda was requested but this onnxruntime has no CUDA provider; "
            "install onnxruntime-gpu or use --device cpu"
        )
    return _CUDA_PROVIDER if device != "cpu" and has_cuda else _CPU_PROVIDER


class OnnxEngine(TransformersEngine):
    """An ONNX model directory from the store (exported by `conversion.onnx`)."""

    def __init__(
        self,
        model_dir: Path,
        family: Family,
        quantization: str,
        device: str = "auto",
        intra_threads: int | None = None,
        inter_threads: int | None = None,
    ) -> None:
        self.family = family
        provider = resolve_onnx_provider(device)
        self.device = torch.device("cuda" if provider == _CUDA_PROVIDER else "cpu")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_threads or 0  # unset or 0: one per core
        options.inter_op_num_threads = inter_threads or 1
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            self.model = load_ort_model(
                family, model_dir, provider=provider, session_options=options
            )
        except (OSError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelSourceError(f"cannot load the ONNX model in {model_dir}: {reason}") from None
        self._pad_token_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        max_input, max_total = limits_from_config(self.model.config, self.tokenizer, family)
        self.info = EngineInfo(
            kind=EngineKind.ONNX,
            device=self.device.type,
            quantization=quantization,
            max_input_tokens=max_input,
            max_total_tokens=max_total,
        )
