"""Writing a run's results: the JSON record, a markdown summary and two PNG plots.

Everything is derived from the `SystemRun` records, so a report can be regenerated from the
JSON file alone (`python -m benchmarks.report RESULT.json`).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from benchmarks import openloop_report
from benchmarks.comparison import Comparison, best_measurement, compare, reference_concurrency
from benchmarks.options import BenchOptions, SystemName
from benchmarks.plotting import finish_axis, pyplot, save
from benchmarks.results import Measurement, SystemRun

# The systems driven over HTTP by closed-loop clients (plotted against concurrency).
_HTTP_SYSTEMS = (SystemName.LAMINI, SystemName.LITSERVE, SystemName.VLLM)

# Line styles of the horizontal baseline lines (one per baseline, at most four quantisations).
_BASELINE_STYLES = ("--", "-.", ":", (0, (5, 1)), (0, (1, 3)), (0, (3, 1, 1, 1)))


class BenchReport(BaseModel):
    """The whole record of one run (the JSON file's schema)."""

    date: str
    model: str
    family: str
    engine: str
    quick: bool
    machine: dict[str, object]
    options: BenchOptions
    systems: list[SystemRun]
    wall_s: float

    def comparisons(self) -> list[Comparison]:
        served = sorted({quantization for _engine, quantization in self.options.served_configs()})
        return compare(
            self.systems,
            self.options.max_new_tokens,
            served,
            self.options.concurrency,
        )

    def to_json(self) -> str:
        record = json.loads(self.model_dump_json())
        record["options"] = {k: _portable(v) for k, v in record["options"].items()}
        record["comparisons"] = [{**vars(c), "met": c.met} for c in self.comparisons()]
        return json.dumps(record, indent=1, allow_nan=True)


_REPO_ROOT = Path(__file__).resolve().parent.parent


def _portable(value: object) -> object:
    """Paths beside the checkout (the repo, ../shared) relative to the repo root, so committed
    results name no machine's directories and still load back."""
    if isinstance(value, str) and value.startswith(str(_REPO_ROOT.parent) + os.sep):
        return os.path.relpath(value, _REPO_ROOT)
    return value


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _measurement_row(m: Measurement) -> list[str]:
    return [
        m.system.value + (f" {m.engine}" if m.engine else ""),
        m.quantization,
        m.variant,
        str(m.max_new_tokens),
        _fmt(m.tokens_per_s, 1),
        _fmt(m.requests_per_s, 2),
        _fmt(m.latency_p50_s),
        _fmt(m.latency_p95_s),
        _fmt(m.latency_p99_s),
        _fmt(m.ttft_p50_s),
        str(m.requests),
        str(m.short_outputs),
        str(m.errors),
    ]


def _speed_drift(report: BenchReport) -> list[str]:
    """A paragraph on how much the machine's speed moved during the run, if it was probed."""
    speeds = [speed for run in report.systems for speed in run.cpu_speed]
    if not speeds:
        return []
    spread = max(speeds) / min(speeds) - 1
    return [
        f"CPU speed probe (`benchmarks.machine.cpu_speed_probe`, M loops/s) before and after "
        f"each system: {min(speeds):g} to {max(speeds):g}, a {spread:.0%} spread; ratios between "
        "systems measured at different speeds carry that difference.",
        "",
    ]


def _target_text(comparison: Comparison) -> str:
    if comparison.target is None:
        return "- (information)"
    return ("≥ " if comparison.higher_is_better else "≤ ") + f"{comparison.target:g}"


def markdown(report: BenchReport) -> str:
    machine = report.machine
    lines = [
        f"# Benchmark: {report.model} ({report.family}, engine {report.engine})",
        "",
        f"{report.date}{' - quick mode (tiny twin, smoke only)' if report.quick else ''}; "
        f"{machine.get('cpu_model')}, {machine.get('usable_cores')} usable cores, "
        f"{machine.get('memory_gib')} GiB; load average at start "
        f"{machine.get('load_average_at_start')}; run took {report.wall_s:.0f}s.",
        "",
        "Libraries: "
        + ", ".join(f"{k} {v}" for k, v in dict(machine.get("libraries", {})).items()),
        "",
        "Thread-related environment: "
        + (", ".join(f"{k}={v}" for k, v in dict(machine.get("environment", {})).items()) or "-"),
        "",
        "## Targets (lamini-serve / other system, same run)",
        "",
    ]
    lines += _table(
        ["comparison", "new tokens", "quant", "lamini-serve", "other", "ratio", "target", "met"],
        (
            [
                c.name,
                str(c.max_new_tokens) if c.max_new_tokens else "reference",
                c.quantization,
                f"{_fmt(c.lamini, 3)} ({c.lamini_variant})",
                f"{_fmt(c.other, 3)} ({c.other_variant})",
                _fmt(c.ratio, 2),
                _target_text(c),
                {None: "-", True: "yes", False: "**no**"}[c.met],
            ]
            for c in report.comparisons()
        ),
    )
    lines += ["", "## Systems", "", *_speed_drift(report)]
    lines += _table(
        [
            "system",
            "ok",
            "run (s)",
            "CPU probe before / after",
            "CPU steal",
            "peak RSS MiB",
            "threads, settings",
            "cold start (s)",
            "notes",
        ],
        (
            [
                run.system.value,
                _status(run),
                _fmt(run.wall_s or math.nan, 0),
                " / ".join(f"{speed:g}" for speed in run.cpu_speed) or "-",
                "-" if run.cpu_steal is None else f"{run.cpu_steal:.0%}",
                _fmt(run.peak_rss_mb or math.nan, 0),
                ", ".join(f"{k}: {v}" for k, v in {**run.threads, **run.settings}.items()) or "-",
                ", ".join(f"{k} {v:.1f}" for k, v in run.cold_start_s.items()) or "-",
                "; ".join(run.notes) or "-",
            ]
            for run in report.systems
        ),
    )
    lines += ["", "## Measurements (warm-up excluded; latency and TTFT in seconds)", ""]
    lines += _table(
        [
            "system",
            "quant",
            "variant",
            "new tokens",
            "tok/s",
            "req/s",
            "p50",
            "p95",
            "p99",
            "TTFT p50",
            "requests",
            "short",
            "errors",
        ],
        (_measurement_row(m) for run in report.systems for m in run.measurements),
    )
    lines += openloop_report.markdown_lines(report.systems)
    lines += openloop_report.peak_rss_lines(report.systems)
    return "\n".join(lines) + "\n"


def _status(run: SystemRun) -> str:
    if run.skipped:
        return f"skipped: {run.skipped}"
    return "yes" if run.ok else f"**failed**: {run.error}"


def _best_tokens_per_s(report: BenchReport, system: SystemName, **fields: object) -> float:
    best = best_measurement(report.systems, system, **fields)
    return best.tokens_per_s if best else math.nan


def plot_throughput(report: BenchReport, path: Path) -> None:
    """Tokens/s against concurrency for the HTTP systems; in-process baselines as lines."""
    plt = pyplot()
    lengths = report.options.max_new_tokens
    at = reference_concurrency(report.options.concurrency)
    figure, axes = plt.subplots(1, len(lengths), figsize=(7 * len(lengths), 5), squeeze=False)
    for axis, n in zip(axes[0], lengths, strict=True):
        for run in report.systems:
            if run.system not in _HTTP_SYSTEMS:
                continue
            series: dict[str, list[Measurement]] = {}
            for m in run.measurements:
                if m.max_new_tokens == n and m.concurrency is not None:
                    engine = f" {m.engine}" if m.engine else ""
                    key = f"{run.system.value}{engine} {m.quantization}" + (
                        " stream" if m.streaming else ""
                    )
                    series.setdefault(key, []).append(m)
            for label, points in series.items():
                points.sort(key=lambda m: m.concurrency or 0)
                axis.plot(
                    [m.concurrency for m in points],
                    [m.tokens_per_s for m in points],
                    marker="o",
                    label=label,
                )
        baselines = [
            (
                "pipeline sequential",
                _best_tokens_per_s(report, SystemName.PIPELINE, max_new_tokens=n),
            ),
            (
                "pipeline batched (best)",
                _best_tokens_per_s(report, SystemName.PIPELINE_BATCHED, max_new_tokens=n),
            ),
        ] + [
            (
                f"raw engine {q} ({label})",
                _best_tokens_per_s(
                    report, SystemName.RAW_ENGINE, max_new_tokens=n, quantization=q, **depth
                ),
            )
            for q in report.options.quantizations
            for label, depth in (
                ("best, any depth", {}),
                (f"<= {at} in flight", {"max_in_flight": at}),
            )
        ]
        for style, (label, value) in zip(_BASELINE_STYLES, baselines, strict=False):
            if not math.isnan(value):
                axis.axhline(value, linestyle=style, color="gray", label=f"{label}: {value:.0f}")
        axis.set_xscale("log", base=2)
        levels = report.options.concurrency
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.set_ylabel("generated tokens/s")
        finish_axis(
            axis, title=f"{report.model}: {n} new tokens", xlabel="concurrent clients (closed loop)"
        )
    save(figure, path)


def plot_latency(report: BenchReport, path: Path) -> None:
    """Latency distribution per concurrency level (non-streaming) for the HTTP systems."""
    plt = pyplot()
    n = max(report.options.max_new_tokens)
    boxes = [
        (f"{run.system.value}\n{m.engine or ''} {m.quantization} c={m.concurrency}", m.latencies_s)
        for run in report.systems
        if run.system in _HTTP_SYSTEMS
        for m in run.measurements
        if m.max_new_tokens == n and not m.streaming and m.latencies_s
    ]
    figure, axis = plt.subplots(figsize=(max(6, 1.1 * len(boxes)), 5))
    if boxes:
        axis.boxplot([values for _label, values in boxes], whis=(1, 99), showfliers=True)
        axis.set_xticks(range(1, len(boxes) + 1), [label for label, _values in boxes], fontsize=7)
    axis.set_yscale("log")  # single requests and queued ones differ by orders of magnitude
    axis.set_ylabel("request latency (s, log scale), whiskers p1-p99")
    axis.set_title(f"{report.model}: latency distribution, {n} new tokens")
    axis.grid(True, axis="y", alpha=0.3)
    save(figure, path)


def model_slug(model: str) -> str:
    name = model.removeprefix("twin:")
    slug = name.rstrip("/").split("/")[-1].replace("@", "-")
    return f"twin-{slug}" if model.startswith("twin:") else slug


def write_report(report: BenchReport, out: Path | None = None) -> list[Path]:
    """Write `<date>-<model>.json`, `.md`, `-throughput.png`, `-latency.png` and, with an open
    loop, `-open-loop.png` into `out` (default: the run's `--output-dir`)."""
    out = out or report.options.output_dir
    out.mkdir(parents=True, exist_ok=True)
    tag = f"-{report.options.tag}" if report.options.tag else ""
    stem = out / f"{report.date}-{model_slug(report.model)}{tag}"
    paths = [
        stem.with_suffix(".json"),
        stem.with_suffix(".md"),
        stem.parent / f"{stem.name}-throughput.png",
        stem.parent / f"{stem.name}-latency.png",
    ]
    paths[0].write_text(report.to_json(), encoding="utf-8")
    paths[1].write_text(markdown(report), encoding="utf-8")
    plot_throughput(report, paths[2])
    plot_latency(report, paths[3])
    open_loop = stem.parent / f"{stem.name}-open-loop.png"
    if openloop_report.plot(report.systems, report.model, open_loop):
        paths.append(open_loop)
    return paths


def main(argv: list[str]) -> int:
    """Regenerate markdown and plots from a result JSON file, next to it."""
    (json_path,) = map(Path, argv)
    report = BenchReport.model_validate_json(json_path.read_text(encoding="utf-8"))
    for path in write_report(report, json_path.parent):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
