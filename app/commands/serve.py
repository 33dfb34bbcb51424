"""`lamini-serve serve [MODEL ...]`: run the HTTP service (one uvicorn worker).

One worker per process is deliberate: each model's engine and batcher live in the process, and
scaling out means more replicas behind the load balancer, each scraped on its own `/metrics`.
SIGTERM drains: readiness goes false, in-flight requests get `shutdown_grace_s` to finish, and
the process exits 0.
"""

from __future__ import annotations

import argparse
import signal

import uvicorn

from app.commands.common import (
    add_model_options,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    settings_from_args,
)
from app.logging import configure_logging
from app.server import create_app
from app.serving.errors import StartupError
from app.serving.state import ServiceState

# Flags that override one `Settings` field each: (flag, field, argparse type, help).
_SERVICE_FLAGS: tuple[tuple[str, str, object, str], ...] = (
    ("--host", "host", str, "address to listen on"),
    ("--port", "port", non_negative_int, "port to listen on"),
    ("--max-batch-size", "max_batch_size", positive_int, "most sequences per batch"),
    ("--max-batch-wait-ms", "max_batch_wait_ms", float, "longest a batch waits to fill"),
    ("--batch-quiet-ms", "batch_quiet_ms", float, "start a batch after this long without arrivals"),
    ("--max-batch-tokens", "max_batch_tokens", positive_int, "prompt+new tokens per batch"),
    ("--max-batch-total-tokens", "max_batch_total_tokens", positive_int, "tokens per step"),
    ("--max-kv-cache-mb", "max_kv_cache_mb", positive_float, "KV-cache budget (continuous)"),
    ("--prefix-cache-mb", "prefix_cache_mb", non_negative_float, "prompt-prefix cache (0: off)"),
    ("--max-queue-size", "max_queue_size", positive_int, "waiting requests before 429"),
    ("--max-client-batch-size", "max_client_batch_size", positive_int, "prompts per request"),
    ("--request-timeout-s", "request_timeout_s", positive_float, "per-request time limit"),
    ("--shutdown-grace-s", "shutdown_grace_s", float, "drain time on SIGTERM"),
    ("--max-body-bytes", "max_body_bytes", positive_int, "largest request body"),
    ("--max-stop-sequences", "max_stop_sequences", non_negative_int, "stop sequences a request"),
    ("--default-max-new-tokens", "default_max_new_tokens", positive_int, "when not given"),
    ("--quantization", "quantization", str, "weights precision (int8, float16, ...)"),
    ("--log-format", "log_format", str, "json or plain"),
    ("--log-level", "log_level", str, "debug, info, warning, error"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="hub id, local checkpoint dir or twin:<hub id>[@tiny] (default: LAMINI_MODELS)",
    )
    add_model_options(parser)
    for flag, field, kind, text in _SERVICE_FLAGS:
        parser.add_argument(flag, dest=field, type=kind, help=f"{text} (LAMINI_{field.upper()})")


class _DrainingServer(uvicorn.Server):
    """uvicorn, but a shutdown signal first turns readiness off and refuses new work."""

    def __init__(self, config: uvicorn.Config, state: ServiceState) -> None:
        super().__init__(config)
        self._state = state

    def handle_exit(self, sig: int, frame: object) -> None:
        self._state.begin_drain()
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    if not args.models:
        args.models = None
    settings = settings_from_args(args)
    configure_logging(settings.log_format, settings.log_level)
    holder: list[_DrainingServer] = []
    app = create_app(settings, on_fatal=lambda: setattr(holder[0], "should_exit", True))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = _DrainingServer(config, app.state.service)
    holder.append(server)
    # uvicorn re-raises the signal it shut down for; a drained SIGTERM is a clean exit (0).
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    state: ServiceState = app.state.service
    if state.load_error is not None:
        raise StartupError(f"cannot serve: {state.load_error}")
    return 0
