"""The precision the stepwise engine computes in: what the device computes fast.

A decode step reads every weight once for a handful of rows, so on a CPU it is bound by memory
traffic, and the fewer bytes per weight the faster:

- int8: the linear layers' weights are quantised to int8 (PyTorch's dynamic quantisation:
  a scale per output channel, activations quantised per step, fbgemm/x86 kernels on x86 with
  AVX2, qnnpack on ARM); attention, norms and embeddings compute in float32. Measured
  on a 2-core AVX2-only AMD EPYC guest (full GPT-124M twin, past of 100 tokens, 2 threads), one
  decode step at batch 1 / 8 / 32: 22.7 / 54.8 / 210 ms against 59.8 / 201 / 345 ms in float32
  (CTranslate2 int8 on the same machine: 18.1 / 62.6 / 196 ms). The default on every x86 CPU
  with AVX2, those with native bfloat16 included: on a 2-core Intel Xeon with AMX, batch 1 /
  8 / 32 took 8.0 / 16.8 / 36.2 ms in int8 against 25.9 / 27.3 / 43.6 ms in bfloat16, and on a
  2-core AMD EPYC with AVX512-BF16 (no AMX) 11.2 / 23.6 / 54.6 ms against 25.1 / 38.0 / 82.7.
  Its KV cache stores bfloat16 (`cache_dtype`): half the memory per token, so the KV-cache
  budget holds twice the tokens, at the same step time (full GPT-124M twin, batch 32 with the
  benchmark's prompts, 2-core AVX2 EPYC: 59.5 against 60.6 ms; the decode loop widens it as it
  reads, `row_attention.py`). Rounding keys and values to bfloat16 (8 significant bits, as
  vLLM's CPU backend keeps its cache) adds less error than the int8 weights and 7-bit
  activations already do.
- bfloat16 halves the weights' and the KV cache's traffic, and on CPUs with AVX512-BF16 or AMX
  oneDNN runs its matrix products natively (float32 on the AMX Xeon: 22.6 / 51.6 / 76.5 ms).
  Its prefill of large batches is the fastest there is on the AVX512-BF16 EPYC (100 tokens x 32
  rows: 2.0 s against 3.6 s in int8), but decode steps dominate an answer. CPUs without those
  instructions emulate it, slower than float32. Selectable; the default on CUDA where the GPU
  has it.
- float32 can always be asked for (`quantization=float32`): what the parity tests pin, and the
  CPU default where no int8 kernel exists (x86 without AVX2).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.activations import NewGELUActivation
from transformers.pytorch_utils import Conv1D

from app.core.errors import EngineUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """How the engine computes: the dtype of activations, whether the linear layers' weights
    are int8, and what the KV cache stores keys and values in."""

    name: str
    dtype: torch.dtype
    int8_weights: bool = False
    cache_dtype: torch.dtype | None = None  # None: `dtype`

    @property
    def stored(self) -> torch.dtype:
        """The KV cache's dtype."""
        return self.cache_dtype or self.dtype

    def apply(self, model: PreTrainedModel) -> PreTrainedModel:
        """`model` (loaded in `dtype`) made ready to compute in this precision. Below float32
        the tanh GELU takes fewer passes (`replace_tanh_gelu`); float32 keeps transformers'
        own arithmetic, which the parity tests pin."""
        if self.name == "float32":
            return model
        replace_tanh_gelu(model)
        return quantize_linear_layers(model) if self.int8_weights else model


PRECISIONS = {
    precision.name: precision
    for precision in (
        Precision("float32", torch.float32),
        Precision("bfloat16", torch.bfloat16),
        Precision("int8", torch.float32, int8_weights=True, cache_dtype=torch.bfloat16),
    )
}
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_INT8_X86_FLAGS = frozenset({"avx2"})  # fbgemm's int8 kernels need AVX2 at least


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):  # x86, ARM
            return frozenset(line.split(":", 1)[-1].split())
    return frozenset()


def default_cpu_precision(flags: frozenset[str], machine: str) -> str:
    """int8 where PyTorch has fast int8 kernels for this CPU, else float32."""
    if machine.lower() in {"aarch64", "arm64"} or _INT8_X86_FLAGS & flags:
        return "int8"
    return "float32"


def default_precision(device: str) -> str:
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return default_cpu_precision(cpu_flags(), platform.machine())


def resolve_precision(setting: str | None, device: str) -> Precision:
    """The precision for the `quantization` setting (None: the device's default)."""
    name = setting or default_precision(device)
    if name not in PRECISIONS:
        raise EngineUnavailableError(
            f"the continuous engine computes in {', '.join(PRECISIONS)}, not {name}"
        )
    if name == "int8" and device != "cpu":
        raise EngineUnavailableError(
            "the continuous engine's int8 runs on CPUs only; use float16 or bfloat16 on "
            f"{device}, or the ct2 engine for int8 there"
        )
    if name == "bfloat16" and device == "cpu" and not _BF16_CPU_FLAGS & cpu_flags():
        logger.warning(
            "this CPU has no AVX512-BF16 or AMX: bfloat16 is emulated and slower than float32 "
            "here; int8 is the fast precision on it"
        )
    return PRECISIONS[name]


def quantize_linear_layers(model: PreTrainedModel) -> PreTrainedModel:
    """Every linear layer of `model` (the output projection included) with int8 weights.

    GPT-2's projections are transformers' `Conv1D` (a linear layer with its weight transposed),
    so they become `nn.Linear` first. A tied output projection gets its own int8 copy; the
    embedding keeps the float32 table.
    """
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                setattr(module, name, _as_linear(child))
    with warnings.catch_warnings():
        # torch.ao's eager quantisation is deprecated in favour of torchao, which has no CPU
        # int8 kernels faster than these (fbgemm/qnnpack) and would be one more dependency.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            model,
            {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            inplace=True,
        )


def replace_tanh_gelu(model: PreTrainedModel) -> PreTrainedModel:
    """GPT-2's, GPT-Neo's and Flan-T5's tanh GELU (transformers' `NewGELUActivation`, six
    elementwise operations written out in Python) as `SigmoidTanhGELU`, the same function in
    fewer passes: on a 2-core AMD EPYC one [32, 3072] activation took 542 us written out and
    216 us as PyTorch's fused kernel (3 % of a batch-32 int8 GPT-124M decode step)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(module, name, SigmoidTanhGELU())
    return model


_GELU_DOUBLED_SCALE = 2 * math.sqrt(2 / math.pi)
_GELU_CUBIC = 0.044715


class SigmoidTanhGELU(torch.nn.Module):
    """The tanh GELU, `0.5 x (1 + tanh(u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`, computed
    as `x * sigmoid(2u)` (the same function) in place on one temporary: PyTorch's fused tanh
    GELU evaluates tanh element by element, and on a 2-core AVX2 EPYC it took 0.219 ms for a
    [32, 3072] float32 activation and 8.9 ms for [1520, 3072], this 0.102 and 6.3 ms (the two
    differ by ~5e-7). Other dtypes take the fused kernel, which computes in float32 inside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return torch.nn.functional.gelu(x, approximate="tanh")
        doubled = x * x  # becomes 2u, then sigmoid(2u), then the result
        doubled.mul_(_GELU_CUBIC * _GELU_DOUBLED_SCALE).add_(_GELU_DOUBLED_SCALE).mul_(x)
        return doubled.sigmoid_().mul_(x)


def return_freed_memory() -> None:
    """Collect what only reference cycles keep (the layers int8 replaced are among it), then
    give the heap's free pages back to the system (glibc's `malloc_trim`; a no-op on other C
    libraries): they lie in the middle of the heap, where the process keeps them. The full
    GPT-124M twin held 1393 MiB after loading in int8, 978 MiB with this."""
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def _as_linear(conv: Conv1D) -> torch.nn.Linear:
    inputs, outputs = conv.weight.shape
    linear = torch.nn.Linear(inputs, outputs, dtype=conv.weight.dtype)
    linear.weight = torch.nn.Parameter(conv.weight.detach().t().contiguous())
    linear.bias = torch.nn.Parameter(conv.bias.detach())
    return linear
