"""Kopf handlers for FineTuneJob: check references, create children in order, map status.

Thin: the shared `Reconciler` (common/reconciler.py) watches the jobs and their children
and holds the per-object lock, the status cache, Events and retries; `render` builds the
children and `status` maps them back. Child state arrives through Kopf indexes (watch
streams), so an idle operator makes no periodic list or get requests. No finalizer: every
child is owned and goes with the job (the garbage collector deletes the checkpoint key
Secret too, which crypto-shreds any checkpoint left on a retained volume).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import kopf

from sealtune_api.finetunejob import FineTuneJobSpec
from sealtune_operator import metrics, settings
from sealtune_operator.common import kube
from sealtune_operator.common.conditions import Manifest
from sealtune_operator.common.reconciler import Indexes, Reconciler, key_of, one
from sealtune_operator.finetunejob import budget, render
from sealtune_operator.finetunejob import status as st

RECONCILER = Reconciler("FineTuneJob", "finetunejobs", st.RULES, metrics.PHASES)
# The jobs' batch/v1 Jobs and pods, by job (ModelServes read the jobs themselves from
# `RECONCILER.objects`, the index of FineTuneJobs by name).
RECONCILER.index_children("trainer_jobs", "batch", "v1", "jobs")
RECONCILER.index_children("trainer_pods", "", "v1", "pods")


@kopf.index("", "v1", "persistentvolumeclaims")  # type: ignore[arg-type]
def claims(namespace: str, name: str, **_: Any) -> dict[Any, Any]:
    """PVC names by namespace: reference checks read memory, not the API server."""
    return {namespace: name}


def check_references(
    namespace: str, spec: FineTuneJobSpec, claims: kopf.Index[Any, Any]
) -> tuple[str, str] | None:
    """(reason, message) when a referenced object is missing or unfit; None when all is well."""
    present = set(claims.get(namespace) or [])
    allowed = settings.current().encrypting_storage_classes
    if spec.checkpoints.storage_class_name not in allowed:
        return (
            "StorageNotEncrypted",
            f"checkpoints.storageClassName {spec.checkpoints.storage_class_name!r} is not in the "
            f"operator's allowlist of encrypting storage classes: "
            f"{', '.join(allowed) or '(none configured)'}",
        )
    if spec.model.pvc and spec.model.pvc.claim_name not in present:
        return "ModelNotFound", f"model PVC {spec.model.pvc.claim_name!r} does not exist"
    if spec.dataset.pvc.claim_name not in present:
        return "DatasetNotFound", f"dataset PVC {spec.dataset.pvc.claim_name!r} does not exist"
    if spec.output.pvc.claim_name not in present:
        return "OutputNotFound", f"output PVC {spec.output.pvc.claim_name!r} does not exist"
    return None


def reconcile(body: Manifest, ix: Indexes) -> str:
    """Check references, then create NetworkPolicy, key, PVC, ConfigMap, SA and Job in order."""
    key = key_of(body)
    generation = int(body["metadata"].get("generation", 1))
    spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
    current = RECONCILER.current(key, body)
    names = render.Names(key[1])
    memo = RECONCILER.memo[key]
    if one(ix["trainer_jobs"], key) is not None:
        # The Job is the last child: if it exists, everything before it does too.
        RECONCILER.write_status(
            body, {**current, "observedGeneration": generation, "jobName": names.job}
        )
        return "unchanged"
    edit = st.RULES.edit(current, generation)
    blocked = check_references(key[0], spec, ix["claims"])
    if blocked:
        reason, message = blocked
        RECONCILER.write_status(
            body, edit.set("ResourcesReady", False, reason, message, True).status
        )
        # Re-checked on a spec change or when one of these PVCs appears.
        memo["waiting_for"] = {
            c.claim_name for c in (spec.model.pvc, spec.dataset.pvc, spec.output.pvc) if c
        }
        return "blocked"
    memo.pop("waiting_for", None)
    # The dataset's PrivacyBudget is charged before anything is created (invariant: a job
    # that would exceed it never starts). spec.privacy is immutable, so a refusal stands
    # until the job is re-created with a smaller budget ask, or the budget is raised.
    refused = budget.charge(key[0], key[1], str(body["metadata"].get("uid", "")), spec)
    if refused:
        reason, message = refused
        edit.set("ResourcesReady", False, reason, message, explain=True)
        RECONCILER.write_status(body, edit.status)
        return "blocked"
    children = render.children(body, spec, settings.current(), os.urandom(32))
    isolated = ("EgressDenied", "all egress denied; ingress only from the operator to metrics")
    RECONCILER.write_children(body, edit, children, kube.create, isolated)
    message = "checkpoint key, PVC, config, service account and Job created"
    status = edit.set("ResourcesReady", True, "Created", message).status
    # Observe the Job as created, so its own watch event finds nothing new to write.
    obs = st.observe(children[-1], [])
    RECONCILER.write_status(body, st.job_status(status, generation, names.job, obs))
    return "created"


def refresh(body: Manifest, current: Manifest, ix: Indexes) -> Manifest | None:
    """The status from the Job and its pods; a waiting pod is re-checked once, when it would
    count as stuck."""
    if not current.get("jobName"):
        return None  # children not created yet; reconcile writes the first status
    key = key_of(body)
    obs = st.observe(
        one(ix["trainer_jobs"], key),
        list(ix["trainer_pods"].get(key) or []),
        datetime.now(UTC),
        settings.current().pod_start_timeout_seconds,
    )
    if obs.recheck_in is not None:
        RECONCILER.recheck(key, obs.recheck_in + 1, ix)
    generation = int(body["metadata"].get("generation", 1))
    return st.job_status(current, generation, current["jobName"], obs)


RECONCILER.watch(reconcile, refresh)
RECONCILER.watch_children("batch", "v1", "jobs")
RECONCILER.watch_children("", "v1", "pods")


@kopf.on.event("", "v1", "persistentvolumeclaims")  # type: ignore[arg-type]
def on_pvc_event(namespace: str, name: str, type: str | None, **ix: Any) -> None:
    """A PVC appeared or changed: re-check the jobs that were blocked waiting for it."""
    if type not in ("ADDED", "MODIFIED", None):
        return
    for key, memo in list(RECONCILER.memo.items()):
        if key[0] != namespace or name not in memo.get("waiting_for", ()):
            continue
        body = one(ix[RECONCILER.objects], key)
        if body is not None:
            RECONCILER.log.info("re-checking %s/%s after PVC %s changed", *key, name)
            RECONCILER.handle(None, body, ix, force=True)
