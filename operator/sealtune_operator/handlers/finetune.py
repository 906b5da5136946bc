"""Kopf handlers for FineTuneJob: check references, create children in order, map status.

Handlers stay thin: rendering lives in `render.finetune`, status mapping in `status`,
API calls in `kube`. Child state arrives through Kopf indexes (watch streams), so an
idle operator makes no periodic list or get requests.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from sealtune_operator import kube, metrics
from sealtune_operator import status as st
from sealtune_operator.models import GROUP, VERSION, FineTuneJobSpec
from sealtune_operator.render import finetune as render
from sealtune_operator.render.common import MANAGED_BY
from sealtune_operator.settings import OperatorSettings

PLURAL = "finetunejobs"
CHILD_FILTER = {"app.kubernetes.io/managed-by": MANAGED_BY, "sealtune.io/finetunejob": kopf.PRESENT}

# Reasons for which nothing was created and a change of a referenced object re-checks.
BLOCKED_REASONS = {"ModelNotFound", "DatasetNotFound", "OutputNotFound", "StorageNotEncrypted"}

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
# What this process last wrote, so a burst of child events does not re-patch the same status.
_written: dict[tuple[str, str], dict[str, Any]] = {}
log = logging.getLogger("sealtune.finetune")

_settings: OperatorSettings = OperatorSettings.from_env()


def configure(settings: OperatorSettings) -> None:
    global _settings
    _settings = settings


# ----------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def ftj_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """FineTuneJobs by (namespace, name): what child events need to compute status."""
    return {(namespace, name): {"body": dict(body), "uid": body["metadata"].get("uid")}}


@kopf.index("batch", "v1", "jobs", labels=CHILD_FILTER)  # type: ignore[arg-type]
def trainer_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels["sealtune.io/finetunejob"]): dict(body)}


@kopf.index("", "v1", "pods", labels=CHILD_FILTER)  # type: ignore[arg-type]
def trainer_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels["sealtune.io/finetunejob"]): dict(body)}


def _one(index: kopf.Index[Any, Any], key: tuple[str, str]) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store else None


# ----------------------------------------------------------------------------- checks


def check_references(namespace: str, spec: FineTuneJobSpec) -> tuple[str, str] | None:
    """(reason, message) when a referenced object is missing or unfit; None when all is well."""
    if spec.checkpoints.storage_class_name not in _settings.encrypting_storage_classes:
        allowed = ", ".join(_settings.encrypting_storage_classes) or "(none configured)"
        return (
            "StorageNotEncrypted",
            f"checkpoints.storageClassName {spec.checkpoints.storage_class_name!r} is not in the "
            f"operator's allowlist of encrypting storage classes: {allowed}",
        )
    if spec.model.pvc and not kube.pvc_exists(namespace, spec.model.pvc.claim_name):
        return "ModelNotFound", f"model PVC {spec.model.pvc.claim_name!r} does not exist"
    if not kube.pvc_exists(namespace, spec.dataset.pvc.claim_name):
        return "DatasetNotFound", f"dataset PVC {spec.dataset.pvc.claim_name!r} does not exist"
    if spec.output.pvc.claim_name != spec.dataset.pvc.claim_name and not kube.pvc_exists(
        namespace, spec.output.pvc.claim_name
    ):
        return "OutputNotFound", f"output PVC {spec.output.pvc.claim_name!r} does not exist"
    return None


# ----------------------------------------------------------------------------- status


def _post_events(body: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    for etype, reason, message in st.transitions(before, after):
        kopf.event(cast(kopf.Body, body), type=etype, reason=reason, message=message)


def _write_status(body: dict[str, Any], new: dict[str, Any]) -> None:
    """Patch status if it changed; post one Event per transition."""
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    stored = _written.get(key) or dict(body.get("status") or {})
    if not st.differs(stored, new):
        return
    kube.patch_status(PLURAL, key[0], key[1], new)
    previous = _written.get(key, {}).get("phase")
    _written[key] = {**stored, **new}
    _post_events(body, stored, new)
    if previous != new.get("phase"):
        if previous:
            metrics.PHASES.labels(previous).dec()
        metrics.PHASES.labels(new.get("phase") or "Unknown").inc()


def refresh(
    namespace: str,
    name: str,
    ftj_index: kopf.Index[Any, Any],
    trainer_jobs: kopf.Index[Any, Any],
    trainer_pods: kopf.Index[Any, Any],
) -> None:
    """Recompute a job's status from its children and write it if it changed."""
    entry = _one(ftj_index, (namespace, name))
    if entry is None:
        return
    body = entry["body"]
    if body["metadata"].get("deletionTimestamp"):
        return
    key = (namespace, name)
    with _locks[key]:
        current = _written.get(key) or dict(body.get("status") or {})
        if not current.get("jobName"):
            return  # children not created yet; the create handler writes the first status
        job = _one(trainer_jobs, key)
        pods = list(trainer_pods.get(key) or [])
        obs = st.observe(job, pods)
        new = st.job_status(
            current, int(body["metadata"].get("generation", 1)), current["jobName"], obs
        )
        _write_status(body, new)


# ----------------------------------------------------------------------------- reconcile


def reconcile(body: dict[str, Any], trainer_jobs: kopf.Index[Any, Any]) -> None:
    """Check references, then create NetworkPolicy, key, PVC, ConfigMap, SA and Job in order."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = (namespace, name)
    generation = int(meta.get("generation", 1))
    started = time.monotonic()
    spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    with _locks[key]:
        current = _written.get(key) or dict(body.get("status") or {})
        names = render.Names(name)
        if _one(trainer_jobs, key) is not None:
            # The Job is the last child: if it exists, everything before it does too.
            new = {**current, "observedGeneration": generation, "jobName": names.job}
            _write_status(body, new)
            metrics.RECONCILES.labels("FineTuneJob", "unchanged").inc()
            return
        blocked = check_references(namespace, spec)
        if blocked:
            new = st.blocked_status(current, generation, *blocked)
            _write_status(body, new)
            metrics.RECONCILES.labels("FineTuneJob", "blocked").inc()
            return
        children = render.children(body, spec, _settings, os.urandom(32))
        status = current
        for child in children:
            kind = child["kind"]
            try:
                kube.create(child)
            except ApiException as exc:
                err = kube.explain(exc, f"{kind} {child['metadata']['name']}")
                ctype = "NetworkIsolated" if kind == "NetworkPolicy" else "ResourcesReady"
                status = st.setup_status(
                    status, generation, ctype, False, f"{kind}{err.reason}", err.message
                )
                _write_status(body, status)
                metrics.ERRORS.labels("FineTuneJob", kind).inc()
                # A temporary error: Kopf retries with backoff; nothing after this child exists.
                raise kopf.TemporaryError(err.message, delay=15) from exc
            if kind == "NetworkPolicy":
                status = st.setup_status(
                    status,
                    generation,
                    "NetworkIsolated",
                    True,
                    "EgressDenied",
                    "all egress denied; ingress only from the operator to metrics",
                )
        status = st.setup_status(
            status,
            generation,
            "ResourcesReady",
            True,
            "Created",
            "checkpoint key, PVC, config, service account and Job created",
        )
        status = st.job_status(status, generation, names.job, st.observe(None, []))
        _write_status(body, status)
    metrics.RECONCILES.labels("FineTuneJob", "created").inc()
    metrics.LATENCY.labels("FineTuneJob").observe(time.monotonic() - started)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")  # type: ignore[arg-type]
def on_change(body: kopf.Body, trainer_jobs: kopf.Index[Any, Any], **_: Any) -> None:
    try:
        reconcile(dict(body), trainer_jobs)
    except kopf.TemporaryError:
        raise
    except Exception:
        metrics.ERRORS.labels("FineTuneJob", "unexpected").inc()
        raise


@kopf.on.delete(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def on_delete(namespace: str, name: str, trainer_pods: kopf.Index[Any, Any], **_: Any) -> None:
    """Stop the trainer first, then shred its checkpoint key; owner references do the rest."""
    names = render.Names(name)
    kube.delete("Job", namespace, names.job, propagation="Foreground")
    if trainer_pods.get((namespace, name)):
        # Keep the NetworkPolicy (an owned child) until no trainer pod is left.
        raise kopf.TemporaryError("waiting for trainer pods to terminate", delay=2)
    kube.delete("Secret", namespace, names.checkpoint_key)
    last = _written.pop((namespace, name), {})
    if last.get("phase"):
        metrics.PHASES.labels(last["phase"]).dec()
    _locks.pop((namespace, name), None)


# ----------------------------------------------------------------------------- children


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_FILTER)  # type: ignore[arg-type]
@kopf.on.event("", "v1", "pods", labels=CHILD_FILTER)  # type: ignore[arg-type]
def on_child_event(
    namespace: str,
    labels: kopf.Labels,
    ftj_index: kopf.Index[Any, Any],
    trainer_jobs: kopf.Index[Any, Any],
    trainer_pods: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    refresh(namespace, labels["sealtune.io/finetunejob"], ftj_index, trainer_jobs, trainer_pods)


@kopf.on.event("", "v1", "persistentvolumeclaims")  # type: ignore[arg-type]
def on_pvc_event(
    namespace: str,
    name: str,
    type: str | None,
    ftj_index: kopf.Index[Any, Any],
    trainer_jobs: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """A PVC appeared or changed: re-check jobs that were blocked on a missing reference."""
    if type not in ("ADDED", "MODIFIED", None):
        return
    for key, store in list(ftj_index.items()):
        if key[0] != namespace:
            continue
        for entry in list(store):
            body = entry["body"]
            conds = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
            cached = _written.get(key) or {}
            for c in cached.get("conditions") or []:
                conds[c["type"]] = c
            ready = conds.get("ResourcesReady") or {}
            if ready.get("status") == "False" and ready.get("reason") in BLOCKED_REASONS:
                spec = body.get("spec") or {}
                claims = {
                    ((spec.get("model") or {}).get("pvc") or {}).get("claimName"),
                    ((spec.get("dataset") or {}).get("pvc") or {}).get("claimName"),
                    ((spec.get("output") or {}).get("pvc") or {}).get("claimName"),
                }
                if name in claims:
                    log.info("re-checking %s/%s after PVC %s changed", key[0], key[1], name)
                    reconcile(body, trainer_jobs)
