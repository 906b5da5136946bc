"""Prometheus metrics of the server, in a registry of its own (one per app instance).

Labels are fixed route templates and status codes only: never paths as sent, key
material or request text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServeMetrics:
    """Counters, gauge and histogram exposed on `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sealtune_serve_requests",
            "HTTP requests by route template and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sealtune_serve_request_duration_seconds",
            "Request latency by route template (streams: until the last byte).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "sealtune_serve_requests_in_flight",
            "Inference requests (/v1/*) being served right now.",
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "sealtune_serve_prompt_tokens", "Prompt tokens processed.", registry=self.registry
        )
        self.completion_tokens = Counter(
            "sealtune_serve_completion_tokens",
            "Completion tokens generated.",
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "sealtune_serve_auth_failures",
            "Requests rejected for a missing or invalid API key.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "sealtune_serve_rate_limited",
            "Requests rejected by the per-key rate limit.",
            registry=self.registry,
        )
        self.pii_filtered = Counter(
            "sealtune_serve_pii_filtered_completions",
            "Completions in which the output filter masked PII.",
            registry=self.registry,
        )
