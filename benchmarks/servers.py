"""Server subprocesses for the HTTP systems: start, wait until ready, sample memory, stop.

Peak RSS is the largest sum over the server's whole process tree (LitServe runs its model in a
worker process), sampled every 100 ms while the server lives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import psutil

from app.core.errors import LaminiError

_SAMPLE_INTERVAL_S = 0.1
_LOG_TAIL_CHARS = 2000


class ServerStartError(LaminiError):
    """A benchmarked server exited or never became ready."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tree_rss_bytes(process: psutil.Process) -> int:
    total = 0
    with contextlib.suppress(psutil.Error):
        for member in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += member.memory_info().rss
    return total


class ServerProcess:
    """One server process; use as a context manager so it is always stopped."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.command = command
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.peak_rss_bytes = 0
        self.phase_peak_rss_bytes = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def __enter__(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start_phase(self) -> None:
        """Start a second peak (`phase_peak_rss_mb`) from now, to measure one phase alone."""
        self.phase_peak_rss_bytes = 0
        self._sample_once()

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20

    @property
    def phase_peak_rss_mb(self) -> float:
        """The peak since `start_phase`, sampled once more now: a phase shorter than the
        sampling interval still has its start and end."""
        self._sample_once()
        return self.phase_peak_rss_bytes / 2**20

    def _sample(self) -> None:
        while not self._stop_sampling.wait(_SAMPLE_INTERVAL_S):
            self._sample_once()

    def _sample_once(self) -> None:
        assert self._process is not None
        with contextlib.suppress(psutil.Error):
            rss = _tree_rss_bytes(psutil.Process(self._process.pid))
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            self.phase_peak_rss_bytes = max(self.phase_peak_rss_bytes, rss)

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL_CHARS:]

    def wait_ready(self, url: str, timeout_s: float) -> float:
        """Seconds from process start until `url` answers 200."""
        assert self._process is not None
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            if self._process.poll() is not None:
                raise ServerStartError(
                    f"{' '.join(self.command[:4])} exited with {self._process.returncode} "
                    f"before it was ready; log tail:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.1)
        raise ServerStartError(
            f"{url} not ready after {timeout_s:.0f}s; log tail:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Terminate the server and its children (LitServe workers), killing stragglers."""
        self._stop_sampling.set()
        if self._process is None or self._process.poll() is not None:
            return
        try:
            children = psutil.Process(self._process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=15)
        _gone, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
