"""Drives the LitServe peer (`litserve_app`) over HTTP exactly like lamini-serve is driven."""

from __future__ import annotations

import sys

from benchmarks.context import BenchContext
from benchmarks.loadgen import RequestSender, json_sender
from benchmarks.options import SystemName
from benchmarks.results import SystemRun
from benchmarks.servers import ServerProcess, free_port
from benchmarks.systems.http_sweep import sweep_concurrency


def _sender(base_url: str, max_new_tokens: int) -> RequestSender:
    return json_sender(
        f"{base_url}/predict",
        lambda text: {"prompt": text, "max_new_tokens": max_new_tokens},
        lambda answer: int(answer["generated_tokens"]),
    )


def run(context: BenchContext) -> SystemRun:
    options = context.options
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "benchmarks.systems.litserve_app",
        "--checkpoint",
        str(context.source.checkpoint_dir),
        "--port",
        str(port),
        "--max-batch-size",
        str(options.litserve_max_batch_size),
        "--batch-timeout",
        str(options.litserve_batch_timeout_s),
    ]
    result = SystemRun(
        system=SystemName.LITSERVE,
        threads={"torch_intra_op": "default (one per core)"},
        notes=[
            f"max_batch_size={options.litserve_max_batch_size}, "
            f"batch_timeout={options.litserve_batch_timeout_s}s, fast_queue; "
            "transformers float32, greedy, min_new_tokens = max_new_tokens"
        ],
    )
    with ServerProcess(command, {}, options.work_dir / "litserve.log") as server:
        result.cold_start_s["first_load"] = server.wait_ready(
            f"{base_url}/health", options.server_ready_timeout_s
        )
        sweep_concurrency(context, result, lambda n: _sender(base_url, n), quantization="float32")
        result.peak_rss_mb = server.peak_rss_mb
    return result
