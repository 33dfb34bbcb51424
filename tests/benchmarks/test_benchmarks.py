"""The benchmark harness stays runnable: `--quick` on a tiny twin drives every system end to end
and writes sane results; its building blocks compute what they claim."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.core.families import get_family
from benchmarks.comparison import compare
from benchmarks.machine import machine_facts
from benchmarks.options import DEFAULT_INSTRUCTIONS, SystemName
from benchmarks.results import Measurement, SystemRun, percentile
from benchmarks.workload import build_workload, read_instructions
from model_store.resolver import default_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_MODEL = "MBZUAI/LaMini-GPT-124M"
QUICK_NEW_TOKENS = 8  # benchmarks.run.QUICK_PRESET
# Systems whose output length is forced (min = max new tokens), so token counts are exact.
FORCED_LENGTH = {"pipeline", "pipeline-batched", "litserve", "raw-engine"}
# What `--quick` serves: the server's `auto` engine for the family, here
SERVED = f"lamini-serve {default_engine(get_family('lamini-gpt'), 'auto').value} int8"


def _bench(twin_cache_dir: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--model",
            f"twin:{QUICK_MODEL}@tiny",
            "--twin-cache-dir",
            str(twin_cache_dir),
            "--output-dir",
            str(tmp_path / "results"),
            "--work-dir",
            str(tmp_path / "work"),
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def quick_run(
    tiny_twin: Callable[[str], Path], twin_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess, Path]:
    tiny_twin(QUICK_MODEL)
    out = tmp_path_factory.mktemp("bench")
    # As on a machine without vLLM (whatever this one has): the peer must say why it is skipped.
    no_vllm = out / "no-vllm-venv"
    return _bench(twin_cache_dir, out, "--quick", "--vllm-venv", str(no_vllm)), out / "results"


@pytest.mark.slow
def test_quick_run_writes_json_markdown_and_plots(quick_run) -> None:
    completed, results = quick_run
    assert completed.returncode == 0, completed.stderr[-4000:]
    written = sorted(path.name for path in results.iterdir())
    stem = written[0].removesuffix(".json").removesuffix(".md").split("-twin-")[0]
    expected = {
        f"{stem}-twin-LaMini-GPT-124M-tiny{suffix}"
        for suffix in (".json", ".md", "-throughput.png", "-latency.png", "-open-loop.png")
    }
    assert set(written) == expected
    for png in results.glob("*.png"):
        assert png.read_bytes().startswith(b"\x89PNG"), png
        assert png.stat().st_size > 10_000, png
    markdown = next(results.glob("*.md")).read_text(encoding="utf-8")
    assert "## Targets" in markdown
    assert "| lamini-serve |" in markdown
    assert "## Open loop" in markdown
    assert f"| 4 | {SERVED} |" in markdown
    assert "| vllm | skipped: vLLM not installed: no " in markdown
    assert "[bench] vllm: skipped: vLLM not installed" in completed.stderr


@pytest.mark.slow
def test_quick_run_measures_every_system_sanely(quick_run) -> None:
    completed, results = quick_run
    assert completed.returncode == 0, completed.stderr[-4000:]
    report = json.loads(next(results.glob("*.json")).read_text(encoding="utf-8"))
    assert report["quick"] is True
    assert report["family"] == "lamini-gpt"
    assert report["machine"]["logical_cores"] >= 1
    assert report["machine"]["libraries"]["ctranslate2"] != "not installed"
    systems = {run["system"]: run for run in report["systems"]}
    assert list(systems) == [system.value for system in SystemName]
    assert systems.pop("vllm")["skipped"].startswith("vLLM not installed")
    for name, run in systems.items():
        assert run["ok"], (name, run["error"])
        assert not run["skipped"], name
        assert run["peak_rss_mb"] > 50, name
        assert run["cold_start_s"], name
        assert len(run["cpu_speed"]) == 2, name
        assert min(run["cpu_speed"]) > 0, name
        assert run["measurements"], name
        for m in run["measurements"]:
            assert m["errors"] == 0, (name, m["first_error"])
            assert m["requests"] >= 4, (name, m["variant"])
            assert m["tokens_per_s"] > 0, (name, m["variant"])
            assert 0 < m["latency_p50_s"] <= m["latency_p95_s"] <= m["latency_p99_s"]
            assert m["max_new_tokens"] == QUICK_NEW_TOKENS
            if name in FORCED_LENGTH:
                assert m["generated_tokens"] == QUICK_NEW_TOKENS * m["requests"], (name, m)
            else:
                assert 0 < m["generated_tokens"] <= QUICK_NEW_TOKENS * m["requests"]
    lamini = systems["lamini-serve"]
    streamed = [m for m in lamini["measurements"] if m["streaming"]]
    assert streamed
    assert all(0 < m["ttft_p50_s"] <= m["latency_p50_s"] for m in streamed)
    assert {m["concurrency"] for m in lamini["measurements"]} == {1, 4}
    assert any(key.startswith("store_hit_start") for key in lamini["cold_start_s"])
    assert any(m["static_prompt"] for m in systems["raw-engine"]["measurements"])
    _check_open_loop(lamini)
    names = {c["name"] for c in report["comparisons"]}
    assert len(names) == 6, names
    assert all(c["ratio"] > 0 for c in report["comparisons"])
    matched = [c for c in report["comparisons"] if "in flight" in c["name"]]
    assert matched
    assert all(c["target"] == 0.9 for c in matched)


def _check_open_loop(lamini: dict) -> None:
    """The quick preset: 6 requests at 4 req/s, then the search's one step to 8 (its cap) when
    4 met the TTFT objective; max_tokens from the reference answers, clipped to 8..12."""
    (series,) = lamini["open_loop"]
    assert series["label"] == SERVED
    rates = [m["rate"] for m in series["rates"]]
    assert rates[0] == 4.0
    assert set(rates) <= {4.0, 8.0}
    for measured in series["rates"]:
        assert measured["errors"] == 0, measured["first_error"]
        assert measured["requests"] == 6
        assert 0 < measured["ttft_p50_s"] <= measured["ttft_p99_s"] <= measured["e2e_p99_s"]
        assert measured["tokens_per_s"] > 0
        assert measured["kept_up"] in (True, False)
        for sample in measured["samples"]:
            assert 8 <= sample["max_tokens"] <= 12
            assert 0 < sample["tokens"] <= sample["max_tokens"]
            assert len(sample["gaps_s"]) <= sample["tokens"] - 1
        assert [s["sent_s"] for s in measured["samples"]] == sorted(
            s["sent_s"] for s in measured["samples"]
        )
    assert series["max_rate_within_objective"] in (None, 4.0, 8.0)
    assert lamini["peak_rss_under_load_mb"][SERVED] > 50


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--instructions", "{tmp}/none.jsonl"), "none.jsonl not found"),
        (("--concurrency", "0"), "concurrency"),
        (("--systems", "pipeline,nope"), "systems"),
        (("--lamini-configs", "ct2"), "ENGINE:QUANTIZATION"),
        (("--open-loop-rates", "2,-1"), "rates must be > 0"),
        (("--vllm-prefix-caching", "maybe"), "vllm_prefix_caching"),
    ],
)
def test_bad_options_are_a_one_line_error(
    tiny_twin: Callable[[str], Path],
    twin_cache_dir: Path,
    tmp_path: Path,
    flags: tuple[str, str],
    message: str,
) -> None:
    tiny_twin(QUICK_MODEL)
    flag, value = flags
    completed = _bench(twin_cache_dir, tmp_path, "--quick", flag, value.format(tmp=tmp_path))
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0, completed.stderr
    assert completed.stderr.startswith("benchmarks: error:")
    assert message in completed.stderr
    assert not (tmp_path / "results").exists()


def test_workload_joins_instruction_and_input_and_wraps_for_the_family() -> None:
    instructions = read_instructions(DEFAULT_INSTRUCTIONS)
    assert len(instructions) == 252
    first = instructions[0]
    assert first.startswith("The sentence you are given might be too wordy")
    assert "\n\nIf you have any questions about my rate" in first
    workload = build_workload(DEFAULT_INSTRUCTIONS, get_family("lamini-gpt"))
    assert workload.prompts[0] == get_family("lamini-gpt").prompt_format.wrap(first)
    assert workload.take(3, offset=251) == [workload.prompts[251], *workload.prompts[:2]]
    assert workload.take(1, wrapped=False) == [first]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.95, 0.99, 1.0])
def test_percentile_matches_numpy(fraction: float) -> None:
    samples = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4, 1.5]
    assert percentile(samples, fraction) == pytest.approx(np.percentile(samples, fraction * 100))


def _throughput_row(system: SystemName, variant: str, tokens: int, **fields: object) -> Measurement:
    return Measurement(
        system=system,
        variant=variant,
        quantization="int8",
        max_new_tokens=64,
        wall_s=1.0,
        generated_tokens=tokens,
        latencies_s=[1.0],
        **fields,
    )


def test_raw_engine_target_is_at_the_clients_depth_and_the_deepest_batch_is_information() -> None:
    raw = SystemRun(
        system=SystemName.RAW_ENGINE,
        measurements=[
            _throughput_row(SystemName.RAW_ENGINE, "batch=16 x2", 400, batch_size=16, in_flight=32),
            _throughput_row(
                SystemName.RAW_ENGINE, "batch=64 x2", 600, batch_size=64, in_flight=128
            ),
        ],
    )
    lamini = SystemRun(
        system=SystemName.LAMINI,
        measurements=[_throughput_row(SystemName.LAMINI, "c=32", 380, concurrency=32)],
    )
    by_name = {c.name: c for c in compare([raw, lamini], [64], ["int8"], [1, 32])}
    matched = by_name["throughput c=32 vs raw engine best, <= 32 in flight"]
    assert (matched.other, matched.target, matched.met) == (400, 0.9, True)
    deepest = by_name["throughput c=32 vs raw engine best, any depth"]
    assert (deepest.other, deepest.target, deepest.met) == (600, None, None)


def test_recorded_environment_keeps_thread_settings_not_paths_or_keys(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("LAMINI_MAX_BATCH_TOTAL_TOKENS", "128")
    monkeypatch.setenv("LAMINI_TWIN_CACHE_DIR", "/somewhere/twins")
    monkeypatch.setenv("LAMINI_API_KEYS", "secret")

    recorded = machine_facts()["environment"]

    assert recorded["OMP_WAIT_POLICY"] == "PASSIVE"
    assert recorded["LAMINI_MAX_BATCH_TOTAL_TOKENS"] == "128"
    assert "LAMINI_TWIN_CACHE_DIR" not in recorded
    assert "LAMINI_API_KEYS" not in recorded
