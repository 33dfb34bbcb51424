"""Machine facts recorded with every result: numbers are meaningless without them."""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata

import psutil

_LIBRARIES = (
    "ctranslate2",
    "onnxruntime",
    "optimum",
    "optimum-onnx",
    "torch",
    "transformers",
    "tokenizers",
    "litserve",
    "fastapi",
    "uvicorn",
    "httpx",
    "lamini-serve",
)


# Environment variables that change how the runtimes use threads; recorded (not read as
# configuration) because they change the numbers, e.g. OMP_WAIT_POLICY on a busy machine.
# Directories (LAMINI_STORE_DIR, LAMINI_TWIN_CACHE_DIR, ...) change no number and name one
# machine's paths, so they are left out.
_RECORDED_ENV_PREFIXES = ("OMP_", "MKL_", "CT2_", "ORT_", "TOKENIZERS_", "LAMINI_")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


_PROBE_LOOPS = 1_000_000


def cpu_speed_probe() -> float:
    """Millions of iterations per second of a fixed single-threaded Python loop (best of three).

    A yardstick, not a benchmark: a virtual machine's speed drifts with its host (seen here:
    one CTranslate2 request took 0.57 s and ten minutes later 0.77 s on an idle guest), so the
    run measures it before and after every system; ratios between systems measured at
    different speeds carry that difference.
    """
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(_PROBE_LOOPS):
            total += i
        best = max(best, _PROBE_LOOPS / (time.perf_counter() - started) / 1e6)
    return round(best, 2)


def machine_facts() -> dict[str, object]:
    """CPU, memory, OS and library versions of the machine running the benchmark."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "environment": {
            name: value
            for name, value in sorted(os.environ.items())
            if name.startswith(_RECORDED_ENV_PREFIXES)
            and "KEY" not in name
            and not name.endswith("_DIR")
        },
    }


def cpu_times() -> tuple[float, float]:
    """(steal, total) CPU seconds since boot, all cores (steal is 0 where not reported)."""
    times = psutil.cpu_times()
    return getattr(times, "steal", 0.0), sum(times)


def steal_share(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Share of CPU time stolen by the hypervisor between two `cpu_times()` readings."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else None
