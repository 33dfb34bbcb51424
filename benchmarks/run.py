"""`python -m benchmarks.run --model MODEL [--quick]`: the whole comparison in one command.

Each in-process system (the pipelines, the raw engine) runs in its own worker process; the HTTP
systems (LitServe, lamini-serve) run their servers in subprocesses and are driven from here
with closed-loop async clients. Results go to `benchmarks/results/<date>-<model>.{json,md}` and
two PNG plots. `--quick` runs a tiny configuration (for CI on tiny twins) so the harness never
rots; every knob of the full run is a flag.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from app.core.errors import LaminiError
from app.settings import Settings
from benchmarks.context import BenchContext
from benchmarks.machine import cpu_speed_probe, cpu_times, machine_facts, steal_share
from benchmarks.options import (
    DEFAULT_INSTRUCTIONS,
    REPO_ROOT,
    BenchOptions,
    SystemName,
    ThreadConfig,
)
from benchmarks.report import BenchReport, model_slug, write_report
from benchmarks.results import SystemRun
from benchmarks.systems import lamini, litserve_peer, raw_engine, vllm_peer

HTTP_SYSTEMS: dict[SystemName, Callable[[BenchContext], SystemRun]] = {
    SystemName.LITSERVE: litserve_peer.run,
    SystemName.VLLM: vllm_peer.run,
    SystemName.LAMINI: lamini.run,
}

# `--quick`: small enough for CI on a tiny twin, yet every code path of the full run.
QUICK_PRESET: dict[str, object] = {
    "requests": 4,
    "warmup_requests": 1,
    "time_budget_s": 15.0,
    "max_new_tokens": [8],
    "concurrency": [1, 4],
    "pipeline_batch_sizes": [1, 4],
    "engine_batch_sizes": [1, 4],
    "quantizations": ["int8"],
    "litserve_max_batch_size": 4,
    "server_ready_timeout_s": 120.0,
    "open_loop_rates": [4.0],
    "open_loop_requests": 6,
    "open_loop_max_rate": 8.0,
    "open_loop_rate_step": 4.0,
    "open_loop_max_tokens": 12,
    "open_loop_time_budget_s": 15.0,
    "peak_rss_clients": 8,
}


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


def _str_list(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


def _float_list(text: str) -> list[float]:
    return [float(part) for part in text.replace(",", " ").split()]


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("LAMINI_"):
        raise argparse.ArgumentTypeError(f"{text!r} is not LAMINI_NAME=VALUE")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__.split("\n\n")[0],
        epilog="Lists are comma separated. Unset knobs take the full-run defaults, or the "
        "quick ones with --quick.",
    )
    add = parser.add_argument
    add(
        "--model",
        dest="models",
        action="append",
        required=True,
        help="hub id, checkpoint dir or twin:<hub id>[@tiny]; repeat to run several models",
    )
    add("--quick", action="store_true", help="tiny CI configuration (use a @tiny twin)")
    add("--systems", type=_str_list, help=f"subset of: {', '.join(s.value for s in SystemName)}")
    add("--engine", choices=["auto", "ct2", "onnx"], help="engine for raw + lamini-serve")
    add("--instructions", dest="instructions_path", type=Path, help="JSONL instruction set")
    add("--requests", type=int, help="timed requests per measurement (min: 2x parallelism)")
    add("--warmup-requests", type=int, help="untimed requests before each measurement")
    add("--time-budget", dest="time_budget_s", type=float, help="seconds per measurement")
    add("--max-new-tokens", type=_int_list, help="forced output lengths, e.g. 64,128")
    add("--concurrency", type=_int_list, help="closed-loop clients, e.g. 1,8,32,64")
    add("--pipeline-batch-sizes", type=_int_list, help="pipeline batch_size sweep")
    add("--engine-batch-sizes", type=_int_list, help="raw engine batch size sweep")
    add("--quantizations", type=_str_list, help="e.g. int8,float32")
    add("--ct2-threads", type=_str_list, help="CTranslate2 intra x inter threads, e.g. 2x1,1x2")
    add("--litserve-max-batch-size", type=int)
    add("--litserve-batch-timeout", dest="litserve_batch_timeout_s", type=float)
    add(
        "--lamini-configs",
        type=_str_list,
        help="lamini-serve ENGINE:QUANTIZATION pairs, e.g. ct2:int8,torch:bfloat16 "
        "(default: --engine with each of --quantizations)",
    )
    add("--open-loop-rates", type=_float_list, help="Poisson rates, req/s, e.g. 2,4,6 ('' = off)")
    add("--open-loop-requests", type=int, help="requests per open-loop rate")
    add("--open-loop-rate-step", type=float, help="step of the upward rate search")
    add("--open-loop-max-rate", type=float, help="cap of the upward rate search")
    add("--open-loop-ttft-objective", dest="open_loop_ttft_objective_s", type=float)
    add("--open-loop-max-tokens", type=int, help="clip of the reference lengths (max_tokens)")
    add("--open-loop-time-budget", dest="open_loop_time_budget_s", type=float)
    add("--peak-rss-clients", type=int, help="concurrent requests of the peak-RSS measurement")
    add("--vllm-venv", type=Path, help="vLLM's virtualenv (benchmarks/install-vllm)")
    add("--vllm-dtype", help="vLLM --dtype (default bfloat16)")
    add("--vllm-kv-cache-gib", type=int, help="VLLM_CPU_KVCACHE_SPACE")
    add("--vllm-cpu-bind", choices=["auto", "all"], help="vLLM's compute threads: default all")
    add(
        "--vllm-prefix-caching",
        metavar="on|off",
        help="vLLM's automatic prefix caching (default on, as vLLM's own default)",
    )
    add(
        "--lamini-env",
        type=_key_value,
        action="append",
        metavar="LAMINI_NAME=VALUE",
        help="extra setting for the lamini-serve server (repeatable)",
    )
    add("--output-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    add("--tag", help="suffix of the result files' names, e.g. open-loop")
    add("--work-dir", type=Path, help="scratch for stores and conversions (default: temp dir)")
    add("--twin-cache-dir", type=Path, help="default: LAMINI_TWIN_CACHE_DIR or the user cache")
    return parser


def options_from_args(args: argparse.Namespace, model: str, work_dir: Path) -> BenchOptions:
    given = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in BenchOptions.model_fields
    }
    if args.ct2_threads is not None:
        given["ct2_threads"] = [ThreadConfig.parse(text) for text in args.ct2_threads]
    if args.lamini_env is not None:
        given["lamini_env"] = dict(args.lamini_env)
    preset = QUICK_PRESET if args.quick else {}
    return BenchOptions(
        **{
            "instructions_path": DEFAULT_INSTRUCTIONS,
            "twin_cache_dir": args.twin_cache_dir or Settings().twin_cache_dir,
            "work_dir": work_dir,
            "model": model,
            **preset,
            **given,
        }
    )


def _run_worker(system: SystemName, options: BenchOptions, options_path: Path) -> SystemRun:
    """Run one in-process system in its own process (its progress lines pass through)."""
    result_path = options.work_dir / f"result-{system.value}.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "benchmarks.worker", system.value]
    completed = subprocess.run([*command, str(options_path), str(result_path)], cwd=REPO_ROOT)
    if result_path.is_file():
        return SystemRun.model_validate_json(result_path.read_text(encoding="utf-8"))
    return SystemRun(
        system=system,
        ok=False,
        error=f"worker exited with status {completed.returncode} without a result "
        "(its traceback is in the run's output above)",
    )


def _run_http(system: SystemName, context: BenchContext) -> SystemRun:
    try:
        return HTTP_SYSTEMS[system](context)
    except Exception as exc:  # a failed system is a result to report, not a crash of the run
        return SystemRun(system=system, ok=False, error=f"{type(exc).__name__}: {exc}")


def _run_system(system: SystemName, context: BenchContext, options_path: Path) -> SystemRun:
    speed_before = cpu_speed_probe()
    times_before = cpu_times()
    started = time.perf_counter()
    if system in HTTP_SYSTEMS:
        run = _run_http(system, context)
    else:
        run = _run_worker(system, context.options, options_path)
    run.wall_s = time.perf_counter() - started
    run.cpu_steal = steal_share(times_before, cpu_times())
    run.cpu_speed = [speed_before, cpu_speed_probe()]
    if run.skipped:
        print(f"[bench] {system.value}: skipped: {run.skipped}", file=sys.stderr, flush=True)
    return run


def _open_loop_plan(options: BenchOptions) -> str:
    series = len(options.served_configs()) * (SystemName.LAMINI in options.systems)
    series += SystemName.VLLM in options.systems
    if not options.open_loop_rates or not series:
        return ""
    rates = ", ".join(f"{rate:g}" for rate in options.open_loop_rates)
    return (
        f"; open loop: {series} series of {options.open_loop_requests} requests at {rates} "
        f"req/s, then up to {options.open_loop_max_rate:g} while TTFT p99 <= "
        f"{options.open_loop_ttft_objective_s:g}s, each rate at most "
        f"{options.open_loop_time_budget_s:.0f}s of arrivals"
    )


def run_benchmark(options: BenchOptions) -> BenchReport:
    started = time.perf_counter()
    options.work_dir.mkdir(parents=True, exist_ok=True)
    context = BenchContext.load(options)  # builds the twin once, before any timing
    options_path = options.work_dir / "options.json"
    options_path.write_text(options.model_dump_json(indent=1), encoding="utf-8")
    facts = machine_facts()
    planned = options.planned_measurements(raw_engine.measures_static_prompt(context))
    print(
        f"[bench] {planned} measurements planned, each at most {options.time_budget_s:.0f}s "
        f"(worst case ~{planned * options.time_budget_s / 60:.0f} min plus start-ups)"
        + _open_loop_plan(options),
        file=sys.stderr,
        flush=True,
    )
    runs = [_run_system(system, context, options_path) for system in options.systems]
    return BenchReport(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        model=options.model,
        family=context.source.family.name,
        engine=raw_engine.engine_kind(context).value,
        quick=options.quick,
        machine=facts,
        options=options,
        systems=runs,
        wall_s=time.perf_counter() - started,
    )


def _benchmark_one(args: argparse.Namespace, model: str) -> int:
    """Run and report one model; 0 when every system succeeded, 1 when one failed, 2 on error."""
    with tempfile.TemporaryDirectory(prefix="lamini-bench-") as scratch:
        work_dir = args.work_dir / model_slug(model) if args.work_dir else Path(scratch)
        try:
            report = run_benchmark(options_from_args(args, model, work_dir))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            print(f"benchmarks: error: invalid option ({problems})", file=sys.stderr)
            return 2
        except LaminiError as exc:
            print(f"benchmarks: error: {exc}", file=sys.stderr)
            return 2
    for path in write_report(report):
        print(path)
    failed = [run for run in report.systems if not run.ok]
    for run in failed:
        print(f"benchmarks: {model}: {run.system.value} failed: {run.error}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return max(_benchmark_one(args, model) for model in args.models)


if __name__ == "__main__":
    sys.exit(main())
