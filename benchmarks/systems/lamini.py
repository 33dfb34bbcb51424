"""lamini-serve over HTTP: cold start, then closed-loop load, non-streaming and streaming.

For each quantisation the server is started twice on the same fresh model store: the first
start converts the model (cold start: conversion plus first load), the second finds it in the
store (store-hit load) and is the one measured. Requests use the TGI routes with greedy
decoding. TGI has no `min_new_tokens`; when the server's OpenAPI schema offers it, output length
is forced, otherwise tokens/s are computed from the generated-token counts the server reports.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from app.core.engine_kinds import EngineKind
from app.core.errors import LaminiError
from app.engines.ctranslate2_engine import thread_layout
from app.settings import Settings
from benchmarks.completions import CompletionsEndpoint, served_model_id
from benchmarks.context import BenchContext
from benchmarks.loadgen import CallResult, RequestSender, json_sender
from benchmarks.openloop import peak_rss_under_load, run_open_loop
from benchmarks.options import SystemName
from benchmarks.results import SystemRun
from benchmarks.servers import ServerProcess, free_port
from benchmarks.systems.http_sweep import sweep_concurrency
from benchmarks.systems.raw_engine import engine_kind

_FORCING_PARAMETER = "min_new_tokens"


@dataclass(frozen=True)
class LaminiEndpoint:
    base_url: str
    force_length: bool

    def parameters(self, max_new_tokens: int) -> dict[str, object]:
        parameters: dict[str, object] = {
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "details": True,
        }
        if self.force_length:
            parameters[_FORCING_PARAMETER] = max_new_tokens
        return parameters

    def generate_sender(self, max_new_tokens: int) -> RequestSender:
        return json_sender(
            f"{self.base_url}/generate",
            lambda text: {"inputs": text, "parameters": self.parameters(max_new_tokens)},
            lambda answer: int(answer["details"]["generated_tokens"]),
        )

    def stream_sender(self, max_new_tokens: int) -> RequestSender:
        async def send(client: httpx.AsyncClient, instruction: str) -> CallResult:
            body = {"inputs": instruction, "parameters": self.parameters(max_new_tokens)}
            started = time.perf_counter()
            first_token: float | None = None
            tokens = 0
            async with client.stream(
                "POST", f"{self.base_url}/generate_stream", json=body
            ) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode("utf-8", "replace")
                    return CallResult(
                        time.perf_counter() - started,
                        0,
                        error=f"HTTP {response.status_code}: {text}",
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line.removeprefix("data:"))
                    if "error" in event:
                        return CallResult(
                            time.perf_counter() - started, tokens, error=str(event["error"])
                        )
                    if event.get("token") is not None:
                        tokens += 1
                        first_token = first_token or time.perf_counter() - started
            return CallResult(time.perf_counter() - started, tokens, ttft_s=first_token)

        return send


def _offers_length_forcing(base_url: str) -> bool:
    """Whether `/generate` accepts `min_new_tokens` (looked up in the OpenAPI schema)."""
    try:
        schema = httpx.get(f"{base_url}/openapi.json", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return False
    return f'"{_FORCING_PARAMETER}"' in json.dumps(schema.get("components", {}))


def _thread_settings(context: BenchContext) -> dict[str, int | str]:
    """The server's thread layout: what `--lamini-env` sets, the engine's choice for the rest."""
    given = {
        name: context.options.lamini_env.get(f"LAMINI_{name.upper()}")
        for name in ("intra_threads", "inter_threads")
    }
    intra, inter = (None if value is None else int(value) for value in given.values())
    if engine_kind(context) is EngineKind.CTRANSLATE2:
        intra, inter = thread_layout("cpu", intra, inter)
    return {"intra_threads": intra or "one per core", "inter_threads": inter or 1}


def _served_settings(base_url: str) -> dict[str, int | str]:
    """Engine, quantisation and batching limits as the running server reports them (`/info`)."""
    info = httpx.get(f"{base_url}/info", timeout=10).json()
    wanted = ("engine", "quantization", "max_batch_size", "max_batch_total_tokens")
    return {f"{info['quantization']} {key}": info[key] for key in wanted if key in info}


class LaminiServer:
    """Starts `lamini-serve serve` for one engine and quantisation against a given store."""

    def __init__(self, context: BenchContext, engine: str, quantization: str) -> None:
        self.context = context
        self.engine = engine
        self.quantization = quantization
        self.name = f"{engine}-{quantization}"
        self.store_dir = context.options.work_dir / f"lamini-store-{self.name}"

    @contextmanager
    def started(self, label: str) -> Iterator[tuple[ServerProcess, str, float]]:
        """The running server, its base URL and the seconds it took to become ready."""
        options = self.context.options
        port = free_port()
        env = {
            "LAMINI_STORE_DIR": str(self.store_dir),
            "LAMINI_TWIN_CACHE_DIR": str(options.twin_cache_dir),
            "LAMINI_QUANTIZATION": self.quantization,
            "LAMINI_ENGINE": self.engine,
            "LAMINI_REQUEST_TIMEOUT_S": "900",
            "LAMINI_MAX_QUEUE_SIZE": str(
                max(256, 4 * max(options.concurrency), 2 * options.open_loop_requests)
            ),
            "LAMINI_LOG_LEVEL": "warning",
            "HF_HUB_OFFLINE": "1",
            **options.lamini_env,
        }
        command = [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            options.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        log = options.work_dir / f"lamini-{self.name}-{label}.log"
        base_url = f"http://127.0.0.1:{port}"
        with ServerProcess(command, env, log) as server:
            ready_s = server.wait_ready(f"{base_url}/ready", options.server_ready_timeout_s)
            yield server, base_url, ready_s


def _measure_served(
    context: BenchContext,
    result: SystemRun,
    server: LaminiServer,
    process: ServerProcess,
    base_url: str,
) -> None:
    """Everything measured on one running configuration: the closed-loop sweeps (TGI routes,
    non-streaming and streaming), the open loop (OpenAI streaming) and the peak RSS under load."""
    served = _served_settings(base_url)
    result.settings.update(served)
    engine = str(served.get(f"{server.quantization} engine", server.engine))
    endpoint = LaminiEndpoint(base_url, _offers_length_forcing(base_url))
    if not endpoint.force_length:
        result.notes.append(
            "output length not forced (no min_new_tokens over HTTP): tokens/s use the "
            "generated-token counts the server reports; see short_outputs"
        )
    tag = {"quantization": server.quantization, "engine": engine}
    sweep_concurrency(context, result, endpoint.generate_sender, **tag)
    sweep_concurrency(context, result, endpoint.stream_sender, streaming=True, **tag)
    label = f"lamini-serve {engine} {server.quantization}"
    if context.options.open_loop_rates:
        completions = CompletionsEndpoint(base_url, served_model_id(base_url))
        result.open_loop.append(
            run_open_loop(
                context, completions, label=label, engine=engine, quantization=server.quantization
            )
        )
    result.peak_rss_under_load_mb[label] = peak_rss_under_load(
        context, process, endpoint.generate_sender(max(context.options.max_new_tokens))
    )


def _run_config(context: BenchContext, result: SystemRun, server: LaminiServer) -> float:
    """Cold start, store-hit start and every measurement of one configuration; its peak RSS."""
    shutil.rmtree(server.store_dir, ignore_errors=True)
    with server.started("cold") as (_process, _url, cold_s):
        result.cold_start_s[f"cold_start_with_conversion_{server.name}"] = cold_s
    with server.started("store-hit") as (process, base_url, hit_s):
        result.cold_start_s[f"store_hit_start_{server.name}"] = hit_s
        result.cold_start_s[f"conversion_estimate_{server.name}"] = max(0.0, cold_s - hit_s)
        _measure_served(context, result, server, process, base_url)
        return process.peak_rss_mb


def run(context: BenchContext) -> SystemRun:
    """Every configuration in turn; one that fails is reported and the others still run (the
    system fails only when all of them did)."""
    result = SystemRun(system=SystemName.LAMINI, threads=_thread_settings(context))
    result.settings["prefix_cache_mb"] = str(
        context.options.lamini_env.get(
            "LAMINI_PREFIX_CACHE_MB", Settings.model_fields["prefix_cache_mb"].default
        )
    )
    peak_rss: list[float] = []
    failures: list[str] = []
    for engine, quantization in context.options.served_configs():
        server = LaminiServer(context, engine, quantization)
        try:
            peak_rss.append(_run_config(context, result, server))
        except (LaminiError, httpx.HTTPError, KeyError, ValueError) as exc:
            failures.append(f"configuration {server.name} failed: {type(exc).__name__}: {exc}")
            print(f"[bench] lamini-serve {failures[-1]}", file=sys.stderr, flush=True)
    result.peak_rss_mb = max(peak_rss, default=None)
    result.notes = sorted(set(result.notes)) + failures
    if not peak_rss:
        result.ok, result.error = False, "; ".join(failures)
    return result
