"""Prometheus metrics of the operator process (no labels carry user data)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "sealtune_reconciles_total",
    "Reconciliations run, by resource kind and result",
    ["kind", "result"],
)
ERRORS = Counter(
    "sealtune_reconcile_errors_total", "Reconciliations that failed", ["kind", "reason"]
)
LATENCY = Histogram(
    "sealtune_reconcile_duration_seconds",
    "Time spent in one reconciliation",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PHASES = Gauge("sealtune_jobs", "FineTuneJobs known to this operator, by phase", ["phase"])
SERVES = Gauge("sealtune_serves", "ModelServes known to this operator, by phase", ["phase"])
