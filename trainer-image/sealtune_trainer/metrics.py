"""Prometheus metrics while training: progress and privacy spend, never data.

Only numbers derived from the run (step counts, loss, epsilon, throughput) are exported;
no label carries a record, a path inside the dataset or key material (invariant 5).
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

log = logging.getLogger(__name__)


class TrainingMetrics:
    """Gauges on their own registry, served on `port` (0: not served, still updated)."""

    def __init__(self, job: str, port: int) -> None:
        self.registry = CollectorRegistry()
        labels = ["job"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry)

        self.step = gauge("sealtune_train_step", "Optimizer steps completed.")
        self.total = gauge("sealtune_train_total_steps", "Optimizer steps planned.")
        self.epsilon = gauge(
            "sealtune_train_epsilon", "Privacy budget epsilon spent so far (+Inf without DP)."
        )
        # Steps per second, not tokens: token counts are sums of private record lengths.
        self.steps_per_second = gauge(
            "sealtune_train_steps_per_second", "Optimizer steps per second (last step)."
        )
        self.noised_loss = gauge(
            "sealtune_train_noised_loss",
            "DP-noised training loss of the last release (its epsilon is in the ledger).",
        )
        self.job = job
        self.server: Any = None
        if port:
            try:
                self.server = start_http_server(port, registry=self.registry)
            except OSError as exc:
                log.warning("metrics port %d unavailable: %s", port, exc.strerror)

    def update(
        self,
        *,
        step: int,
        total: int,
        steps_per_second: float,
        epsilon: float | None = None,
        noised_loss: float | None = None,
    ) -> None:
        self.step.labels(self.job).set(step)
        self.total.labels(self.job).set(total)
        self.steps_per_second.labels(self.job).set(steps_per_second)
        if epsilon is not None:
            self.epsilon.labels(self.job).set(epsilon)
        if noised_loss is not None:
            self.noised_loss.labels(self.job).set(noised_loss)

    def close(self) -> None:
        if self.server is not None:
            server = self.server[0] if isinstance(self.server, tuple) else self.server
            server.shutdown()
            self.server = None
