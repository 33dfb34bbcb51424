"""The continuous engine's precision: the default follows what the CPU computes fast, int8
turns every linear layer (GPT-2's Conv1D included) into an int8 one, and what cannot run is
refused with a reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.activations import NewGELUActivation
from transformers.pytorch_utils import Conv1D

from app.core.errors import EngineUnavailableError
from app.engines.stepwise.precision import (
    PRECISIONS,
    SigmoidTanhGELU,
    cpu_flags,
    default_cpu_precision,
    quantize_linear_layers,
    resolve_precision,
)
from tests.support.twins import FAMILY_TWINS


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        ({"sse4_2", "avx", "avx2", "fma"}, "x86_64", "int8"),
        ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "x86_64", "int8"),
        ({"sse4_2", "avx"}, "x86_64", "float32"),
        ({"fp", "asimd"}, "aarch64", "int8"),
    ],
)
def test_cpu_default_is_int8_where_int8_kernels_exist(flags, machine, expected) -> None:
    assert default_cpu_precision(frozenset(flags), machine) == expected


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n", encoding="utf-8")

    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_unknown_and_unrunnable_precisions_are_refused() -> None:
    with pytest.raises(EngineUnavailableError, match="float32, bfloat16, int8"):
        resolve_precision("int4", "cpu")
    with pytest.raises(EngineUnavailableError, match="CPUs only"):
        resolve_precision("int8", "cuda")


def test_emulated_bfloat16_is_warned_about(monkeypatch, caplog) -> None:
    monkeypatch.setattr("app.engines.stepwise.precision.cpu_flags", lambda: frozenset({"avx2"}))

    assert resolve_precision("bfloat16", "cpu").dtype is torch.bfloat16
    assert "emulated" in caplog.text


@pytest.mark.parametrize(("precision", "fused"), [("float32", False), ("int8", True)])
def test_below_float32_the_tanh_gelu_takes_fewer_passes(tiny_twin, precision, fused) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_twin(FAMILY_TWINS["lamini-gpt"])).eval()
    ids = torch.tensor([[464, 3290, 318, 257]])
    with torch.inference_mode():
        before = model(ids).logits

    PRECISIONS[precision].apply(model)
    with torch.inference_mode():
        after = model(ids).logits

    kinds = {type(module) for module in model.modules()}
    assert (SigmoidTanhGELU in kinds) is fused
    assert (NewGELUActivation in kinds) is not fused
    if not fused:
        assert torch.equal(after, before)  # float32 is transformers' arithmetic, bit for bit
    x = torch.linspace(-12, 12, 2001)
    expected = NewGELUActivation()(x)
    torch.testing.assert_close(SigmoidTanhGELU()(x), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(x, torch.linspace(-12, 12, 2001))  # the input is not written to
    halved = x.to(torch.bfloat16)
    torch.testing.assert_close(
        SigmoidTanhGELU()(halved), NewGELUActivation()(halved), rtol=1e-2, atol=1e-2
    )


def test_int8_replaces_every_linear_layer(tiny_twin) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_twin(FAMILY_TWINS["lamini-gpt"])).eval()
    ids = torch.tensor([[464, 3290, 318, 257]])
    with torch.inference_mode():
        before = model(ids).logits

    quantize_linear_layers(model)
    with torch.inference_mode():
        after = model(ids).logits

    kinds = {type(module) for module in model.modules()}
    assert Conv1D not in kinds
    assert torch.nn.Linear not in kinds
    assert torch.ao.nn.quantized.dynamic.Linear in kinds
    assert model.get_output_embeddings().weight().dtype == torch.qint8
    # int8 rounding moves the logits a little, never wholesale
    assert torch.corrcoef(torch.stack([before.flatten(), after.flatten()]))[0, 1] > 0.99


FREED_HEAP = """
import sys
import torch
from app.engines.stepwise.precision import return_freed_memory

def rss_mib():
    status = open("/proc/self/status").read()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024

first = torch.ones(256 * 1024)  # an mmapped 1 MiB block: freeing it lets later ones use the heap
del first
blocks = [torch.ones(256 * 1024) for _ in range(300)]
pinned = torch.ones(256 * 1024)  # keeps the heap's top in use, so free() cannot shrink it
del blocks
before = rss_mib()
if sys.argv[1] == "trim":
    return_freed_memory()
print(before, rss_mib())
"""


@pytest.mark.parametrize("trim", ["trim", "keep"])
def test_memory_freed_inside_the_heap_goes_back_to_the_system(trim: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FREED_HEAP, trim],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    before, after = map(int, done.stdout.split())

    assert before > 300  # the freed blocks were still held
    if trim == "trim":
        assert after < before - 200, (before, after)
    else:
        assert after > before - 20, (before, after)
