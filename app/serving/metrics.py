"""Prometheus metrics, named like TGI's (`tgi_request_*`, `tgi_batch_*`) with a `lamini_` prefix.

The names are a contract: Prometheus rules and the Grafana dashboard are built on them. Every
series carries a `model` label so one process can serve several models. Metrics live in the
app's own registry (not the global one) so each app - and each test - counts from zero.

Deployment model: one uvicorn worker per process (the `serve` command enforces it) and replicas
behind the load balancer; each replica is scraped on its own `/metrics`, so no multiprocess
mode is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
STEP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric of the service, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "lamini_request_duration_seconds",
            "End-to-end request latency.",
            ["model", "route"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "lamini_request_queue_duration_seconds",
            "Time a request waited in the queue before its batch started.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "lamini_request_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.time_per_output_token = Histogram(
            "lamini_request_time_per_output_token_seconds",
            "Mean time per generated token after the first.",
            ["model"],
            buckets=PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "lamini_request_input_tokens",
            "Prompt length in tokens.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.generated_tokens_per_request = Histogram(
            "lamini_request_generated_tokens",
            "Generated tokens per request.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lamini_batch_size",
            "Sequences per engine batch.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "lamini_request_inter_token_latency_seconds",
            "Time between two consecutive tokens of one sequence (continuous engine).",
            ["model"],
            buckets=PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.step_duration = Histogram(
            "lamini_step_duration_seconds",
            "Duration of one engine step of the continuous engine, by kind (prefill, decode).",
            ["model", "kind"],
            buckets=STEP_BUCKETS,
            registry=r,
        )
        self.step_tokens = Histogram(
            "lamini_step_tokens",
            "Tokens one engine step computed: prompt tokens (prefill) or sequences (decode).",
            ["model", "kind"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.running_sequences = Gauge(
            "lamini_running_sequences",
            "Sequences in the running batch of the continuous engine (waiting ones: "
            "lamini_queue_size).",
            ["model"],
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            "lamini_kv_cache_usage_ratio",
            "KV cache the running batch holds, as a share of its budget (max_kv_cache_mb).",
            ["model"],
            registry=r,
        )
        self.prefix_cache_queries = Counter(
            "lamini_prefix_cache_queries",
            "Prompt tokens of the requests joining the continuous engine's batch (decoder-only, "
            "prefix cache on).",
            ["model"],
            registry=r,
        )
        self.prefix_cache_hits = Counter(
            "lamini_prefix_cache_hits",
            "Of those prompt tokens, the ones found in the prefix cache (not computed).",
            ["model"],
            registry=r,
        )
        self.prefix_cache_usage = Gauge(
            "lamini_prefix_cache_usage_ratio",
            "Memory the prefix cache holds, as a share of its budget (prefix_cache_mb).",
            ["model"],
            registry=r,
        )
        self.requests = Counter(
            "lamini_request",
            "Requests answered, by route and HTTP status.",
            ["model", "route", "status"],
            registry=r,
        )
        self.cancelled = Counter(
            "lamini_request_cancelled",
            "Requests whose client went away before they finished.",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "lamini_request_rejected",
            "Requests refused before generation, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "lamini_generated_tokens",
            "Tokens generated.",
            ["model"],
            registry=r,
        )
        self.queue_size = Gauge(
            "lamini_queue_size", "Requests waiting for a batch.", ["model"], registry=r
        )
        self.in_flight = Gauge(
            "lamini_requests_in_flight",
            "Requests accepted and not yet answered (queued or generating).",
            ["model"],
            registry=r,
        )
        self.model_load_seconds = Gauge(
            "lamini_model_load_seconds",
            "Startup time per model and stage (convert, load).",
            ["model", "stage"],
            registry=r,
        )
        self.build_info = Gauge(
            "lamini_build_info",
            "Version and configuration of this server (value is always 1).",
            ["version", "engine", "device", "python"],
            registry=r,
        )

    def for_model(self, model: str) -> ModelMetrics:
        """The per-model view the batcher and the generation layer observe into."""
        return ModelMetrics(self, model)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class ModelMetrics:
    """The metrics of one model, with the `model` label already applied."""

    metrics: Metrics
    model: str

    def observe_queue_wait(self, seconds: float) -> None:
        self.metrics.queue_duration.labels(self.model).observe(seconds)

    def observe_batch(self, size: int) -> None:
        self.metrics.batch_size.labels(self.model).observe(size)

    def observe_inter_token(self, seconds: float) -> None:
        self.metrics.inter_token_latency.labels(self.model).observe(seconds)

    def observe_step(self, kind: str, seconds: float, tokens: int) -> None:
        self.metrics.step_duration.labels(self.model, kind).observe(seconds)
        self.metrics.step_tokens.labels(self.model, kind).observe(tokens)

    def set_running(self, sequences: int) -> None:
        self.metrics.running_sequences.labels(self.model).set(sequences)

    def set_kv_cache_usage(self, ratio: float) -> None:
        self.metrics.kv_cache_usage.labels(self.model).set(ratio)

    def observe_prefix_cache(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.metrics.prefix_cache_queries.labels(self.model).inc(prompt_tokens)
        self.metrics.prefix_cache_hits.labels(self.model).inc(cached_tokens)

    def set_prefix_cache_usage(self, ratio: float) -> None:
        self.metrics.prefix_cache_usage.labels(self.model).set(ratio)

    def set_queue_size(self, size: int) -> None:
        self.metrics.queue_size.labels(self.model).set(size)

    def track_in_flight(self, delta: int) -> None:
        self.metrics.in_flight.labels(self.model).inc(delta)

    def count_cancelled(self) -> None:
        self.metrics.cancelled.labels(self.model).inc()

    def count_rejected(self, reason: str) -> None:
        self.metrics.rejected.labels(self.model, reason).inc()

    def observe_generation(
        self,
        input_tokens: int,
        generated_tokens: int,
        time_to_first_token: float | None,
        time_per_output_token: float | None,
    ) -> None:
        m = self.metrics
        m.input_tokens.labels(self.model).observe(input_tokens)
        m.generated_tokens_per_request.labels(self.model).observe(generated_tokens)
        m.generated_tokens.labels(self.model).inc(generated_tokens)
        if time_to_first_token is not None:
            m.time_to_first_token.labels(self.model).observe(time_to_first_token)
        if time_per_output_token is not None:
            m.time_per_output_token.labels(self.model).observe(time_per_output_token)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.metrics.requests.labels(self.model, route, str(status)).inc()
        self.metrics.request_duration.labels(self.model, route).observe(seconds)

    def set_load_seconds(self, stage: str, seconds: float) -> None:
        self.metrics.model_load_seconds.labels(self.model, stage).set(seconds)
