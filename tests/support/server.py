"""Start the real `lamini-serve serve` in a subprocess on a free loopback port, for tests.

Shared by the API, OpenAI and deployment tests:

    with running_server(["twin:MBZUAI/LaMini-Flan-T5-77M@tiny"], env={...}, args=[...]) as srv:
        srv.post("/generate", json={...})

The server inherits the test session's environment (twin cache, store, offline hub; see
conftest.py), plus `env`; it is stopped with SIGTERM when the block ends (killed if it does not
drain in time). Its output goes to a log file whose tail is shown when startup fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]

# The engine every test server uses unless a test says otherwise: the reference engine loads a
# tiny twin in about a second and needs no conversion.
DEFAULT_TEST_ENV = {"LAMINI_ENGINE": "transformers", "LAMINI_INTRA_THREADS": "1"}

# The histograms of the metrics contract (dashboards and alert rules are built on these names).
HISTOGRAMS = (
    "lamini_request_duration_seconds",
    "lamini_request_queue_duration_seconds",
    "lamini_request_time_to_first_token_seconds",
    "lamini_request_time_per_output_token_seconds",
    "lamini_request_input_tokens",
    "lamini_request_generated_tokens",
    "lamini_batch_size",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A started server: its URL, process and log, with small helpers for tests."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.client() as client:
            return client.post(path, **kwargs)

    def metric_samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of `/metrics`, parsed by prometheus_client: (name, labels) -> value."""
        response = self.get("/metrics")
        response.raise_for_status()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample_name, sample_labels), value in self.metric_samples().items()
            if sample_name == name and wanted <= sample_labels
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server and wait for it to exit; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_until_ready(server: RunningServer, timeout: float) -> None:
    """Poll `/ready` until 200; fail with the log tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"lamini-serve exited with {server.process.returncode}:\n{server.log()[-4000:]}"
            )
        try:
            if server.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"lamini-serve not ready after {timeout:g}s:\n{server.log()[-4000:]}")


@contextmanager
def running_server(
    models: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    wait_ready: bool = True,
    ready_timeout: float = 180,
) -> Iterator[RunningServer]:
    """`lamini-serve serve MODELS... ARGS...` on a free port, stopped (SIGTERM) on exit."""
    port = free_port()
    command = [sys.executable, "-m", "app.cli", "serve", *models]
    command += ["--host", "127.0.0.1", "--port", str(port), *args]
    log_dir = Path(tempfile.mkdtemp(prefix="lamini-serve-test-"))
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **DEFAULT_TEST_ENV, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if wait_ready:
            wait_until_ready(server, ready_timeout)
        yield server
    finally:
        server.stop()
