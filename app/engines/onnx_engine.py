"""The ONNX Runtime engine: optimum's ORT models, driven exactly like the transformers engine.

optimum's `ORTModelForCausalLM` / `ORTModelForSeq2SeqLM` implement transformers' generation
interface on top of ONNX Runtime sessions, so batching, padding, sampling, log-probs and the
per-step tracker feed are inherited from `TransformersEngine`; loading and how a batch is run
differ. This is the engine for GPT-Neo, which CTranslate2 cannot convert.

Two measured choices for CPUs (LaMini-Neo-125M twin, int8, 2 cores, 64 new tokens):
- torch only does per-step glue here (logits processors, argmax, our log-probs), but its
  OpenMP threads spin against ONNX Runtime's pool: one request took 1.0 s with torch on two
  threads and 0.53 s on one, so generation runs with one torch thread;
- ONNX Runtime computes a padded batch at the width of its longest prompt, so a batch is run
  as length-sorted groups of at most `GROUP_SIZE`, one after another: 32 shuffled
  self-instruct prompts made 171 tok/s as one batch, 248 in groups of 8 (float32: 171 -> 238).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import onnxruntime
import torch
from transformers import AutoTokenizer

from app.core.engine_kinds import EngineKind
from app.core.errors import ModelSourceError
from app.core.families import Family
from app.engines.base import (
    EngineInfo,
    SamplingParams,
    SequenceTracker,
    cut_longest_first,
    limits_from_config,
)
from app.engines.loading import load_ort_model
from app.engines.transformers_engine import TransformersEngine

_CUDA_PROVIDER = "CUDAExecutionProvider"
_CPU_PROVIDER = "CPUExecutionProvider"
# Measured on 2 cores (see the module docstring): 4 -> 214, 8 -> 248, 16 -> 225 tok/s at 32 prompts.
GROUP_SIZE = 8


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run torch ops of the calling thread on `count` threads, then restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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

    def _generate(self, trackers: list[SequenceTracker], sampling: SamplingParams) -> None:
        """Length-sorted groups one after another, with torch's glue on one thread."""
        groups = cut_longest_first(trackers, math.ceil(len(trackers) / GROUP_SIZE))
        with _torch_threads(1):
            for group in groups:
                super()._generate(group, sampling)
