"""Overload, disconnects, timeouts, startup failure and graceful shutdown, on real servers.

A long `max_batch_wait_ms` and `batch_quiet_ms` keep requests queued for a known time, which
makes "queued" and "in flight" observable without racing the (fast) tiny model.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.server import DEFAULT_TEST_ENV, RunningServer, running_server

MODEL = "twin:MBZUAI/LaMini-GPT-124M@tiny"
SLOW_QUEUE = ["--max-batch-wait-ms", "1500", "--batch-quiet-ms", "1500", "--max-batch-size", "64"]


def generate_body(max_new_tokens: int = 4) -> dict:
    return {"inputs": "Say hi.", "parameters": {"max_new_tokens": max_new_tokens}}


def wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(call()))
    thread.start()
    return thread, results


@pytest.fixture(scope="module")
def slow_queue_server() -> Iterator[RunningServer]:
    with running_server([MODEL], args=[*SLOW_QUEUE, "--max-queue-size", "2"]) as running:
        yield running


def test_queue_overflow_answers_429_with_retry_after(slow_queue_server: RunningServer) -> None:
    server = slow_queue_server
    waiting = [in_background(lambda: server.post("/generate", json=generate_body())) for _ in "ab"]
    wait_for(lambda: server.metric("lamini_queue_size", model=MODEL) == 2)

    overflow = server.post("/generate", json=generate_body())
    stream_overflow = server.post("/generate_stream", json=generate_body())

    for response in (overflow, stream_overflow):
        assert response.status_code == 429
        assert response.json()["error_type"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1
    for thread, results in waiting:
        thread.join(30)
        assert results[0].status_code == 200
    assert server.metric("lamini_request_rejected_total", model=MODEL, reason="queue_full") == 2
    assert server.metric("lamini_request_total", route="/generate", status="429") == 1


def test_disconnect_while_queued_cancels_and_frees_the_slot(
    slow_queue_server: RunningServer,
) -> None:
    server = slow_queue_server
    cancelled_before = server.metric("lamini_request_cancelled_total", model=MODEL)
    two_prompts = {"inputs": ["Say hi.", "Say bye."], "parameters": {"max_new_tokens": 4}}
    with pytest.raises(httpx.ReadTimeout):
        server.post("/generate", json=two_prompts, timeout=0.5)

    wait_for(
        lambda: server.metric("lamini_request_cancelled_total", model=MODEL) == cancelled_before + 2
    )
    assert server.metric("lamini_queue_size", model=MODEL) == 0
    wait_for(lambda: server.metric("lamini_requests_in_flight", model=MODEL) == 0)
    assert server.post("/generate", json=generate_body()).status_code == 200


def test_disconnect_while_generating_cancels_a_plain_request(
    slow_queue_server: RunningServer,
) -> None:
    server = slow_queue_server
    cancelled_before = server.metric("lamini_request_cancelled_total", model=MODEL)
    body = json.dumps(generate_body(max_new_tokens=900)).encode()
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /generate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_for(
            lambda: (
                server.metric("lamini_queue_size", model=MODEL) == 0
                and server.metric("lamini_requests_in_flight", model=MODEL) == 1
            )
        )

    wait_for(
        lambda: server.metric("lamini_request_cancelled_total", model=MODEL) > cancelled_before
    )
    wait_for(lambda: server.metric("lamini_requests_in_flight", model=MODEL) == 0)
    assert server.metric("lamini_request_total", route="/generate", status="499") >= 1


def test_disconnect_while_streaming_stops_generation(slow_queue_server: RunningServer) -> None:
    server = slow_queue_server
    cancelled_before = server.metric("lamini_request_cancelled_total", model=MODEL)
    tokens_before = server.metric("lamini_generated_tokens_total", model=MODEL)
    with (
        server.client() as client,
        client.stream(
            "POST", "/generate_stream", json=generate_body(max_new_tokens=900)
        ) as response,
    ):
        first = next(response.iter_lines())
        assert first.startswith("data:")

    wait_for(
        lambda: server.metric("lamini_request_cancelled_total", model=MODEL) > cancelled_before
    )
    wait_for(lambda: server.metric("lamini_requests_in_flight", model=MODEL) == 0)
    # A cancelled request's tokens are not counted as served.
    assert server.metric("lamini_generated_tokens_total", model=MODEL) == tokens_before


@pytest.mark.slow
def test_requests_past_the_timeout_get_504() -> None:
    args = [*SLOW_QUEUE, "--request-timeout-s", "0.5"]
    with running_server([MODEL], args=args, wait_ready=True) as server:
        response = server.post("/generate", json=generate_body())
        assert response.status_code == 504
        assert response.json()["error_type"] == "timeout"
        assert "request_timeout_s" in response.json()["error"]
        streamed = server.post("/generate_stream", json=generate_body())
        assert streamed.status_code == 200  # the stream had started: the error is its last event
        last_event = json.loads(streamed.text.strip().split("\n\n")[-1].removeprefix("data:"))
        assert last_event["error_type"] == "timeout"
        assert server.metric("lamini_request_rejected_total", reason="timeout") == 2
        wait_for(lambda: server.metric("lamini_queue_size", model=MODEL) == 0)


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_then_exits_0() -> None:
    with running_server([MODEL], args=[*SLOW_QUEUE, "--shutdown-grace-s", "20"]) as server:
        thread, results = in_background(
            lambda: server.post("/generate", json=generate_body(max_new_tokens=6))
        )
        wait_for(lambda: server.metric("lamini_requests_in_flight", model=MODEL) == 1)

        server.process.send_signal(signal.SIGTERM)
        thread.join(30)
        exit_status = server.process.wait(30)

        assert results[0].status_code == 200
        assert results[0].json()["generated_text"] is not None
        assert exit_status == 0
        assert "draining" in server.log()


def test_a_model_that_cannot_load_fails_startup_with_one_clear_line() -> None:
    with running_server(["twin:MBZUAI/No-Such-Model"], wait_ready=False) as server:
        exit_status = server.process.wait(120)
    assert exit_status == 2
    assert "lamini-serve: error: cannot serve: twin:MBZUAI/No-Such-Model" in server.log()


def test_serve_rejects_bad_flags_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", MODEL, "--max-batch-size", "0"],
        capture_output=True,
        text=True,
        env={**DEFAULT_TEST_ENV, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "max-batch-size" in result.stderr


@pytest.mark.slow
def test_models_and_settings_come_from_the_environment() -> None:
    env = {"LAMINI_MODELS": f"{MODEL}", "LAMINI_MAX_BATCH_SIZE": "3", "LAMINI_LOG_FORMAT": "json"}
    with running_server([], env=env) as server:
        info = server.get("/info").json()
        assert info["model_id"] == MODEL
        assert info["max_batch_size"] == 3
        assert server.log().lstrip().startswith("{")


def test_a_list_of_prompts_in_separate_batches_all_answer() -> None:
    """Prompts of one request that finish at different times must not cancel each other."""
    body = {
        "inputs": ["Hi.", "Write a much longer prompt about the sea and its many moods."],
        "parameters": {"max_new_tokens": 3},
    }
    with running_server([MODEL], args=["--max-batch-size", "1"]) as server:
        response = server.post("/generate", json=body)
        assert server.metric("lamini_batch_size_count", model=MODEL) == 2
    assert response.status_code == 200, response.text
    assert len(response.json()) == 2
