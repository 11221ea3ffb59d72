"""Prometheus metrics of one server, named as vLLM names its own (``vllm:`` becomes ``selfish:``).

One ``CollectorRegistry`` per app, made at start-up, so several apps (tests, Ray replicas) never share or
clash; prometheus-client's metrics are thread-safe, the inference worker updates them from its thread.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The server's counters, gauges and histograms; ``render()`` is the body of ``GET /metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str):
        r = self.registry = CollectorRegistry()
        m = ["model_name"]
        self.model_name = model_name
        self.requests = Counter("selfish:http_requests", "HTTP requests by route, method and status code",
                                ["route", "method", "status"], registry=r)
        self.waiting = Gauge("selfish:num_requests_waiting", "Requests queued for the inference worker", m,
                             registry=r).labels(model_name)
        self.running = Gauge("selfish:num_requests_running", "Sequences in the continuous generation batch", m,
                             registry=r).labels(model_name)
        self.prompt_tokens = Counter("selfish:prompt_tokens", "Prompt and scored tokens processed", m,
                                     registry=r).labels(model_name)
        self.generation_tokens = Counter("selfish:generation_tokens", "Tokens generated", m,
                                         registry=r).labels(model_name)
        self.ttft = Histogram("selfish:time_to_first_token_seconds", "Time from arrival to the first generated "
                              "token", m, buckets=LATENCY_BUCKETS, registry=r).labels(model_name)
        self.itl = Histogram("selfish:inter_token_latency_seconds", "Time between two tokens of one sequence", m,
                             buckets=LATENCY_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram("selfish:e2e_request_latency_seconds", "Time from arrival to the last answer byte "
                             "computed, per request", m + ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("selfish:batch_size", "Sequences per engine call: a scoring batch or one generation "
                               "step", m + ["kind"], buckets=BATCH_BUCKETS, registry=r)
        self.rejected = Counter("selfish:requests_rejected", "Requests refused with 429 (queue full)", m,
                                registry=r).labels(model_name)

    def observe_batch(self, kind: str, size: int) -> None:
        self.batch.labels(self.model_name, kind).observe(size)

    def observe_e2e(self, kind: str, seconds: float) -> None:
        self.e2e.labels(self.model_name, kind).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
