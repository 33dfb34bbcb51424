"""The open loop's part of the report: tables (every series, and lamini-serve beside vLLM as the
issue states its goals) and the plot of TTFT and throughput against the offered rate."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from benchmarks.openloop_results import OpenLoopRun, RateMeasurement
from benchmarks.options import SystemName
from benchmarks.plotting import finish_axis, pyplot, save
from benchmarks.results import SystemRun

_TTFT_STYLES = (("ttft_p50_s", "p50", "o", "-"), ("ttft_p99_s", "p99", "s", "--"))


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def series(runs: list[SystemRun]) -> list[tuple[SystemName, OpenLoopRun]]:
    return [(run.system, s) for run in runs if run.ok for s in run.open_loop]


def _rate_row(label: str, m: RateMeasurement) -> list[str]:
    return [
        f"{m.rate:g}",
        label,
        _fmt(m.ttft_p50_s),
        _fmt(m.ttft_p99_s),
        _fmt(m.itl_p50_s * 1000, 1),
        _fmt(m.itl_p99_s * 1000, 1),
        _fmt(m.e2e_p50_s),
        _fmt(m.e2e_p99_s),
        _fmt(m.tokens_per_s, 1),
        _fmt(m.requests_per_s, 2),
        "yes" if m.kept_up else "**no**",
        str(m.requests),
        str(m.errors) + (f" ({m.first_error[:80]})" if m.first_error else ""),
    ]


def _side_by_side(lamini: OpenLoopRun, peer: OpenLoopRun) -> list[str]:
    theirs = {m.rate: m for m in peer.rates}
    rows = [
        [
            f"{m.rate:g}/s",
            f"{_fmt(m.ttft_p50_s)} / {_fmt(m.ttft_p99_s)} s",
            f"{_fmt(theirs[m.rate].ttft_p50_s)} / {_fmt(theirs[m.rate].ttft_p99_s)} s",
            f"{_fmt(m.e2e_p50_s)} / {_fmt(m.e2e_p99_s)} s",
            f"{_fmt(theirs[m.rate].e2e_p50_s)} / {_fmt(theirs[m.rate].e2e_p99_s)} s",
        ]
        for m in lamini.rates
        if m.rate in theirs
    ]
    header = [
        "rate",
        f"{lamini.label} TTFT p50 / p99",
        f"{peer.label} TTFT p50 / p99",
        f"{lamini.label} e2e p50 / p99",
        f"{peer.label} e2e p50 / p99",
    ]
    return ["", *_table(header, rows)]


def _highest_rate(s: OpenLoopRun) -> str:
    best = s.max_rate_within_objective
    if best is not None and best == max(m.rate for m in s.rates):
        return f"at least {best:g} req/s (the search's cap: every measured rate met it)"
    if best is not None:
        return f"{best:g} req/s"
    return f"none measured (below {min((m.rate for m in s.rates), default=math.nan):g} req/s)"


def markdown_lines(runs: list[SystemRun]) -> list[str]:
    """The open-loop sections (empty without an open-loop series)."""
    found = series(runs)
    if not found:
        return []
    lines = [
        "",
        "## Open loop (Poisson arrivals, streamed `/v1/completions`, reference-length outputs)",
        "",
        "TTFT and end-to-end in seconds, inter-token latency (ITL) in ms between streamed "
        "chunks; tok/s over the whole measurement (arrivals plus drain); *kept up*: no error "
        "and the last quarter of arrivals waited at most 2x (+0.25 s) as long for their first "
        "token as the first quarter (a queue that grows means the system fell behind).",
        "",
    ]
    header = ["rate", "system", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "e2e p50"]
    header += ["e2e p99", "tok/s", "done/s", "kept up", "requests", "errors"]
    rows = [_rate_row(s.label, m) for _system, s in found for m in s.rates]
    lines += _table(header, sorted(rows, key=lambda row: (float(row[0]), row[1])))
    lines += ["", "Highest rate with TTFT p99 within the objective (every lower rate too):", ""]
    lines += [
        f"- {s.label}: {_highest_rate(s)} (objective {s.ttft_objective_s:g} s)" for _, s in found
    ]
    peers = [s for system, s in found if system is SystemName.VLLM]
    for lamini in (s for system, s in found if system is SystemName.LAMINI):
        for peer in peers:
            lines += _side_by_side(lamini, peer)
    return lines


def peak_rss_lines(runs: list[SystemRun]) -> list[str]:
    rows = [
        [run.system.value, label, _fmt(mb, 0)]
        for run in runs
        for label, mb in run.peak_rss_under_load_mb.items()
    ]
    if not rows:
        return []
    return [
        "",
        "## Peak RSS under concurrent load",
        "",
        *_table(["system", "configuration", "peak RSS MiB (server process tree)"], rows),
    ]


def plot(runs: list[SystemRun], title: str, path: Path) -> bool:
    """TTFT p50/p99 (log scale) and output tok/s against the offered rate, every series;
    False (nothing written) without an open-loop series."""
    found = series(runs)
    if not found:
        return False
    figure, (ttft_axis, tput_axis) = pyplot().subplots(1, 2, figsize=(14, 5))
    for index, (_system, s) in enumerate(found):
        color = f"C{index}"
        rates = [m.rate for m in s.rates]
        for field, name, marker, style in _TTFT_STYLES:
            values = [getattr(m, field) for m in s.rates]
            ttft_axis.plot(
                rates,
                values,
                marker=marker,
                linestyle=style,
                color=color,
                label=f"{s.label} {name}",
            )
        tput_axis.plot(
            rates, [m.tokens_per_s for m in s.rates], marker="o", color=color, label=s.label
        )
    offered = found[0][1].rates  # the same requests for every series: offered tok/s
    tput_axis.plot(
        [m.rate for m in offered],
        [m.rate * m.requested_tokens / max(1, len(m.samples)) for m in offered],
        color="gray",
        linestyle=":",
        label="offered (rate x mean max_tokens)",
    )
    objective = found[0][1].ttft_objective_s
    ttft_axis.axhline(objective, color="gray", linestyle=":", label=f"objective {objective:g} s")
    ttft_axis.set_yscale("log")
    ttft_axis.set_ylabel("time to first token (s, log scale)")
    tput_axis.set_ylabel("generated tokens/s")
    for axis, name in ((ttft_axis, "TTFT"), (tput_axis, "throughput")):
        finish_axis(
            axis, title=f"{title}: open loop {name}", xlabel="offered rate (requests/s, Poisson)"
        )
    save(figure, path)
    return True
