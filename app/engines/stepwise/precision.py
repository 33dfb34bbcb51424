"""The precision the stepwise engine computes in: what the device computes fast.

bfloat16 halves the weights' and the KV cache's memory traffic, and on CPUs with AVX512-BF16 or
AMX oneDNN runs its matrix products natively (measured on such a CPU, GPT-124M decode step at
batch 32: 54 ms against 94 ms in float32). CPUs without those instructions emulate bfloat16 and
are slower than float32, so there float32 is the default. float32 can always be asked for
(`quantization=float32`), and is what the parity tests pin.
"""

from __future__ import annotations

from pathlib import Path

import torch

from app.core.errors import EngineUnavailableError

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_has_fast_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU flags include native bfloat16 arithmetic (Linux; False elsewhere)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_CPU_FLAGS & set(line.split(":", 1)[-1].split()))
    return False


def default_precision(device: str) -> str:
    if device == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_fast_bfloat16() else "float32"


def resolve_precision(setting: str | None, device: str) -> str:
    """The precision name for the `quantization` setting (None: the device's default)."""
    name = setting or default_precision(device)
    if name not in PRECISIONS:
        raise EngineUnavailableError(
            f"the continuous engine computes in {' or '.join(PRECISIONS)}, not {name}; "
            "use the ct2 or onnx engine for int8"
        )
    return name
