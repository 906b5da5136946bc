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

from sealtune_api.finetunejob import GROUP, VERSION, FineTuneJobSpec
from sealtune_operator import kube, metrics
from sealtune_operator import status as st
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
# (uid, generation) reconciled last, so events caused by our own status writes are no-ops.
_done: dict[tuple[str, str], tuple[str, int]] = {}
# Jobs whose reference checks failed, with the PVC names whose appearance re-checks them.
_blocked: dict[tuple[str, str], set[str]] = {}
RETRY_SECONDS = 15.0
_retrying: set[tuple[str, str]] = set()
log = logging.getLogger("sealtune.finetune")

_settings: OperatorSettings = OperatorSettings.from_env()


def configure(settings: OperatorSettings) -> None:
    global _settings
    _settings = settings


# ----------------------------------------------------------------------------- indexes


@kopf.index(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def ftj_index(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    """FineTuneJobs by (namespace, name): what child events need to compute status."""
    return {(namespace, name): {"body": dict(body)}}


@kopf.index("batch", "v1", "jobs", labels=CHILD_FILTER)  # type: ignore[arg-type]
def trainer_jobs(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels["sealtune.io/finetunejob"]): dict(body)}


@kopf.index("", "v1", "pods", labels=CHILD_FILTER)  # type: ignore[arg-type]
def trainer_pods(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Any, Any]:
    return {(namespace, labels["sealtune.io/finetunejob"]): dict(body)}


@kopf.index("", "v1", "persistentvolumeclaims")  # type: ignore[arg-type]
def claims(namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    """PVC names by namespace: reference checks read memory, not the API server."""
    return {namespace: name}


def _one(index: kopf.Index[Any, Any], key: tuple[str, str]) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store else None


# ----------------------------------------------------------------------------- checks


def check_references(
    namespace: str, spec: FineTuneJobSpec, claims: kopf.Index[Any, Any]
) -> tuple[str, str] | None:
    """(reason, message) when a referenced object is missing or unfit; None when all is well."""
    present = set(claims.get(namespace) or [])
    if spec.checkpoints.storage_class_name not in _settings.encrypting_storage_classes:
        allowed = ", ".join(_settings.encrypting_storage_classes) or "(none configured)"
        return (
            "StorageNotEncrypted",
            f"checkpoints.storageClassName {spec.checkpoints.storage_class_name!r} is not in the "
            f"operator's allowlist of encrypting storage classes: {allowed}",
        )
    if spec.model.pvc and spec.model.pvc.claim_name not in present:
        return "ModelNotFound", f"model PVC {spec.model.pvc.claim_name!r} does not exist"
    if spec.dataset.pvc.claim_name not in present:
        return "DatasetNotFound", f"dataset PVC {spec.dataset.pvc.claim_name!r} does not exist"
    if spec.output.pvc.claim_name not in present:
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


def reconcile(
    body: dict[str, Any],
    trainer_jobs: kopf.Index[Any, Any],
    claims: kopf.Index[Any, Any],
    force: bool = False,
) -> None:
    """Check references, then create NetworkPolicy, key, PVC, ConfigMap, SA and Job in order.

    Runs on every event of the FineTuneJob but acts once per (uid, generation); `force`
    re-runs it when a referenced object changed.
    """
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    key = (namespace, name)
    generation = int(meta.get("generation", 1))
    version = (str(meta.get("uid")), generation)
    if not force and _done.get(key) == version:
        return
    started = time.monotonic()
    spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    with _locks[key]:
        if not force and _done.get(key) == version:
            return
        current = _written.get(key) or dict(body.get("status") or {})
        names = render.Names(name)
        if _one(trainer_jobs, key) is not None:
            # The Job is the last child: if it exists, everything before it does too.
            new = {**current, "observedGeneration": generation, "jobName": names.job}
            _write_status(body, new)
            _done[key] = version
            metrics.RECONCILES.labels("FineTuneJob", "unchanged").inc()
            return
        blocked = check_references(namespace, spec, claims)
        if blocked:
            new = st.blocked_status(current, generation, *blocked)
            _write_status(body, new)
            _done[key] = version  # re-checked on a spec change or a PVC event
            _blocked[key] = {
                c.claim_name
                for c in (spec.model.pvc, spec.dataset.pvc, spec.output.pvc)
                if c is not None
            }
            metrics.RECONCILES.labels("FineTuneJob", "blocked").inc()
            return
        _blocked.pop(key, None)
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
                # Nothing after this child exists; try again later, with the newest spec.
                _schedule_retry(key, trainer_jobs, claims)
                log.warning(
                    "creating %s failed, retrying in %ss: %s",
                    kind,
                    RETRY_SECONDS,
                    err.message,
                    extra={"object": {"namespace": namespace, "name": name}},
                )
                return
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
        # Observe the Job as created, so its own watch event finds nothing new to write.
        status = st.job_status(status, generation, names.job, st.observe(children[-1], []))
        _write_status(body, status)
        _done[key] = version
    metrics.RECONCILES.labels("FineTuneJob", "created").inc()
    metrics.LATENCY.labels("FineTuneJob").observe(time.monotonic() - started)


def _schedule_retry(
    key: tuple[str, str], trainer_jobs: kopf.Index[Any, Any], claims: kopf.Index[Any, Any]
) -> None:
    """One pending retry per job, with the newest spec when it fires."""
    if key in _retrying:
        return
    _retrying.add(key)

    def retry() -> None:
        _retrying.discard(key)
        body = kube.get_custom(PLURAL, *key)
        if body and not body["metadata"].get("deletionTimestamp"):
            reconcile(body, trainer_jobs, claims, force=True)

    timer = threading.Timer(RETRY_SECONDS, retry)
    timer.daemon = True
    timer.start()


@kopf.on.event(GROUP, VERSION, PLURAL)  # type: ignore[arg-type]
def on_event(
    type: str | None,
    body: kopf.Body,
    trainer_jobs: kopf.Index[Any, Any],
    claims: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """Every FineTuneJob event (incl. the initial listing after a restart) reconciles.

    An event handler rather than Kopf's create/update handlers: it keeps no progress or
    diff-base records, so a new job costs one status write instead of three.
    """
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if type == "DELETED":
        _forget(key)
        return
    if body["metadata"].get("deletionTimestamp"):
        return
    try:
        reconcile(dict(body), trainer_jobs, claims)
    except Exception:
        metrics.ERRORS.labels("FineTuneJob", "unexpected").inc()
        raise


def _forget(key: tuple[str, str]) -> None:
    """The job is gone; its children go with it through owner references (the garbage
    collector deletes the checkpoint key Secret too, which crypto-shreds any checkpoint
    left on a retained volume). No finalizer is needed: nothing is left un-owned."""
    _done.pop(key, None)
    _blocked.pop(key, None)
    _locks.pop(key, None)
    last = _written.pop(key, {})
    if last.get("phase"):
        metrics.PHASES.labels(last["phase"]).dec()


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
    claims: kopf.Index[Any, Any],
    **_: Any,
) -> None:
    """A PVC appeared or changed: re-check the jobs that were blocked waiting for it."""
    if type not in ("ADDED", "MODIFIED", None):
        return
    for key, wanted in list(_blocked.items()):
        if key[0] != namespace or name not in wanted:
            continue
        entry = _one(ftj_index, key)
        if entry is not None:
            log.info("re-checking %s/%s after PVC %s changed", key[0], key[1], name)
            reconcile(entry["body"], trainer_jobs, claims, force=True)
