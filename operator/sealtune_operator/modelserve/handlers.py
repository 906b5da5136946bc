"""Kopf handlers for ModelServe: wait for the adapter, apply children in order, map status.

Thin like `handlers.finetune`: rendering lives in `render.serve`, status mapping in
`status_serve`, API calls in `kube`. The referenced FineTuneJobs and the serving
Deployments arrive through Kopf indexes (watch streams): a ModelServe waiting for its
job is re-checked when the job changes, never by polling.

Children are applied with server-side apply (one field manager), so a spec change (access
list, replicas, runtime, limits) converges every child, and fields the operator stops
rendering disappear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from sealtune_api.finetunejob import GROUP, VERSION
from sealtune_api.modelserve import ModelServeSpec
from sealtune_operator import kube, metrics
from sealtune_operator import status_serve as st
from sealtune_operator.render import serve as render
from sealtune_operator.render.common import MANAGED_BY
from sealtune_operator.settings import OperatorSettings
from sealtune_operator.status import differs

PLURAL = "modelserves"
KIND = "ModelServe"
CHILD_FILTER = {"app.kubernetes.io/managed-by": MANAGED_BY, "sealtune.io/modelserve": kopf.PRESENT}

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
# What this process last wrote / applied, so bursts of events cause no repeated writes.
_written: dict[tuple[str, str], dict[str, Any]] = {}
_applied: dict[tuple[str, str], str] = {}
log = logging.getLogger("sealtune.serve")

_settings: OperatorSettings = OperatorSettings.from_env()


def configure(settings: OperatorSettings) -> None:
    global _settings
    _settings = settings


# ----------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def ms_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """ModelServes by (namespace, name)."""
    return {(namespace, name): dict(body)}


@kopf.index(GROUP, VERSION, "finetunejobs")  # type: ignore[arg-type]
def ms_finetunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """FineTuneJobs by (namespace, name): only what resolving an adapter needs."""
    return {
        (namespace, name): {
            "metadata": {
                "name": name,
                "deletionTimestamp": body["metadata"].get("deletionTimestamp"),
            },
            "spec": dict(body.get("spec") or {}),
            "status": {
                k: v
                for k, v in dict(body.get("status") or {}).items()
                if k in ("phase", "audit", "output")
            },
        }
    }


@kopf.index("apps", "v1", "deployments", labels=CHILD_FILTER)  # type: ignore[arg-type]
def serve_deployments(
    namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Any, Any]:
    return {(namespace, labels["sealtune.io/modelserve"]): dict(body)}


@kopf.index("", "v1", "pods", labels=CHILD_FILTER)  # type: ignore[arg-type]
def serve_pods(namespace: str, labels: kopf.Labels, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels["sealtune.io/modelserve"]): True}


def _one(index: kopf.Index[Any, Any], key: tuple[str, str]) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store else None


# ----------------------------------------------------------------------------- status


def _write_status(body: dict[str, Any], new: dict[str, Any]) -> None:
    """Patch status if it changed; post one Event per transition."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    stored = _written.get(key) or dict(body.get("status") or {})
    if not differs(stored, new):
        return
    kube.patch_status(PLURAL, key[0], key[1], new)
    previous = _written.get(key, {}).get("phase")
    _written[key] = {**stored, **new}
    for etype, reason, message in st.transitions(stored, new):
        kopf.event(cast(kopf.Body, body), type=etype, reason=reason, message=message)
    if previous != new.get("phase"):
        if previous:
            metrics.SERVES.labels(previous).dec()
        metrics.SERVES.labels(new.get("phase") or "Unknown").inc()


def refresh(
    namespace: str,
    name: str,
    ms_index: kopf.Index[Any, Any],
    serve_deployments: kopf.Index[Any, Any],
) -> None:
    """Recompute phase and ready replicas from the Deployment and write them if they changed."""
    body = _one(ms_index, (namespace, name))
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    key = (namespace, name)
    with _locks[key]:
        current = _written.get(key) or dict(body.get("status") or {})
        if not current.get("deploymentName"):
            return  # not rolled out yet; the reconcile writes the first status
        replicas = int((body.get("spec") or {}).get("replicas", 1))
        new = st.serve_status(
            current,
            int(body["metadata"].get("generation", 1)),
            replicas,
            _one(serve_deployments, key),
        )
        _write_status(body, new)


# ----------------------------------------------------------------------------- reconcile


def _digest(children: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()


def _apply(body: dict[str, Any], status: dict[str, Any], child: dict[str, Any]) -> None:
    """Server-side apply one child; on failure record why and let Kopf retry."""
    generation = int(body["metadata"].get("generation", 1))
    kind = child["kind"]
    try:
        kube.apply(child)
    except ApiException as exc:
        err = kube.explain(exc, f"{kind} {child['metadata']['name']}")
        ctype = "NetworkIsolated" if kind == "NetworkPolicy" else "ResourcesReady"
        status = st.setup_status(
            status, generation, ctype, False, f"{kind}{err.reason}", err.message
        )
        _write_status(body, status)
        metrics.ERRORS.labels(KIND, kind).inc()
        # Nothing after this child is applied: with the NetworkPolicy missing, no pod exists.
        raise kopf.TemporaryError(err.message, delay=15) from exc


def _isolated(status: dict[str, Any], generation: int, spec: ModelServeSpec) -> dict[str, Any]:
    access = spec.access
    peers = len(access.namespaces) + len(access.pod_selectors) + len(access.cidrs)
    message = (
        f"egress denied; ingress on port {render.SERVING_PORT} only from {peers} peer(s) in "
        "spec.access"
        if peers
        else "egress denied; no ingress allowed (spec.access is empty)"
    )
    return st.setup_status(
        status, generation, "NetworkIsolated", True, "IngressRestricted", message
    )


def reconcile(
    body: dict[str, Any],
    ms_finetunejobs: kopf.Index[Any, Any],
    serve_deployments: kopf.Index[Any, Any],
) -> None:
    """Resolve the adapter; once it is ready apply NetworkPolicy, ConfigMap, SA, Deployment,
    Service and PDB in that order, and map the Deployment to status."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = (namespace, name)
    generation = int(meta.get("generation", 1))
    started = time.monotonic()
    spec = ModelServeSpec.model_validate(body.get("spec") or {})
    job = None
    if spec.adapter.fine_tune_job is not None:
        job = _one(ms_finetunejobs, (namespace, spec.adapter.fine_tune_job.name))
    adapter = st.resolve_adapter(spec, job)
    with _locks[key]:
        current = _written.get(key) or dict(body.get("status") or {})
        deploy = _one(serve_deployments, key)
        if adapter.ref is None:
            if deploy is None and not current.get("deploymentName"):
                _write_status(body, st.waiting_status(current, generation, adapter))
                metrics.RECONCILES.labels(KIND, "waiting").inc()
                return
            # Already serving an earlier adapter: keep it, but access changes apply at once.
            status = dict(current)
            _apply(body, status, render.network_policy(body, spec))
            status = _isolated(status, generation, spec)
            status = st.setup_status(
                status,
                generation,
                "AdapterNotReady",
                False,
                adapter.reason,
                adapter.message + "; still serving the adapter rolled out before",
            )
            _write_status(body, st.serve_status(status, generation, spec.replicas, deploy))
            metrics.RECONCILES.labels(KIND, "waiting").inc()
            return
        children = render.children(body, spec, adapter.ref, _settings)
        digest = _digest(children)
        status = dict(current)
        if _applied.get(key) != digest or deploy is None:
            for child in children:
                _apply(body, status, child)
                if child["kind"] == "NetworkPolicy":
                    status = _isolated(status, generation, spec)
            if spec.replicas <= 1:
                kube.delete(
                    "PodDisruptionBudget", namespace, render.Names(name).pod_disruption_budget
                )
            _applied[key] = digest
            result = "applied"
        else:
            result = "unchanged"
        status = st.setup_status(
            status, generation, "AdapterNotReady", True, adapter.reason, adapter.message
        )
        status = st.setup_status(
            status,
            generation,
            "ResourcesReady",
            True,
            "Applied",
            "config, service account, Deployment and Service applied",
        )
        status["endpoint"] = render.endpoint(body)
        status["deploymentName"] = render.Names(name).deployment
        if adapter.ref.sha256:
            status["adapterSha256"] = adapter.ref.sha256
        _write_status(body, st.serve_status(status, generation, spec.replicas, deploy))
    metrics.RECONCILES.labels(KIND, result).inc()
    metrics.LATENCY.labels(KIND).observe(time.monotonic() - started)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")  # type: ignore[arg-type]
def on_change(
    body: kopf.Body,
    ms_finetunejobs: kopf.Index[Any, Any],
    serve_deployments: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    try:
        reconcile(dict(body), ms_finetunejobs, serve_deployments)
    except kopf.TemporaryError:
        raise
    except Exception:
        metrics.ERRORS.labels(KIND, "unexpected").inc()
        raise


@kopf.on.delete(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def on_delete(namespace: str, name: str, serve_pods: kopf.Index[Any, Any], **_: Any) -> None:
    """Stop the serving pods first, then remove the other children, NetworkPolicy last."""
    names = render.Names(name)
    kube.delete("Deployment", namespace, names.deployment, propagation="Foreground")
    if serve_pods.get((namespace, name)):
        # Keep the isolating NetworkPolicy until no serving pod is left.
        raise kopf.TemporaryError("waiting for serving pods to terminate", delay=2)
    kube.delete("PodDisruptionBudget", namespace, names.pod_disruption_budget)
    kube.delete("Service", namespace, names.service)
    kube.delete("ConfigMap", namespace, names.config_map)
    kube.delete("ServiceAccount", namespace, names.service_account)
    kube.delete("NetworkPolicy", namespace, names.network_policy)
    key = (namespace, name)
    last = _written.pop(key, {})
    _applied.pop(key, None)
    if last.get("phase"):
        metrics.SERVES.labels(last["phase"]).dec()
    _locks.pop(key, None)


# ----------------------------------------------------------------------------- watches


@kopf.on.event("apps", "v1", "deployments", labels=CHILD_FILTER)  # type: ignore[arg-type]
def on_deployment_event(
    namespace: str,
    labels: kopf.Labels,
    ms_index: kopf.Index[Any, Any],
    serve_deployments: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    refresh(namespace, labels["sealtune.io/modelserve"], ms_index, serve_deployments)


@kopf.on.event(GROUP, VERSION, "finetunejobs")  # type: ignore[arg-type]
def on_finetunejob_event(
    namespace: str,
    name: str,
    ms_index: kopf.Index[Any, Any],
    ms_finetunejobs: kopf.Index[Any, Any],
    serve_deployments: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """A FineTuneJob changed: re-resolve every ModelServe that serves its adapter."""
    for key, store in list(ms_index.items()):
        if key[0] != namespace:
            continue
        for body in list(store):
            if body["metadata"].get("deletionTimestamp"):
                continue
            ref = ((body.get("spec") or {}).get("adapter") or {}).get("fineTuneJob") or {}
            if ref.get("name") == name:
                try:
                    reconcile(body, ms_finetunejobs, serve_deployments)
                except kopf.TemporaryError as exc:
                    # Recorded in the ModelServe's status; the next event or a resume retries.
                    log.warning("%s/%s not rolled out: %s", key[0], key[1], exc)
                except Exception:
                    metrics.ERRORS.labels(KIND, "unexpected").inc()
                    log.exception("%s/%s: reconcile after a FineTuneJob change failed", *key)
