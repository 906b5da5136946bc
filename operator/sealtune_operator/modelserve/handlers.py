"""Kopf handlers for ModelServe: wait for the adapter, apply children in order, map status.

Thin, on the same `Reconciler` as FineTuneJob (common/reconciler.py). The FineTuneJobs
come from the FineTuneJob kind's index; ModelServes are indexed by the job they serve, so
a job's change re-resolves exactly those ModelServes, never by polling. Children are
applied with server-side apply (one field manager), so a spec change (access list,
replicas, runtime, limits) converges every child, and fields the operator stops rendering
disappear. A finalizer keeps the isolating NetworkPolicy until no serving pod is left.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import kopf

from sealtune_api.finetunejob import GROUP, VERSION
from sealtune_api.modelserve import ModelServeSpec
from sealtune_operator import metrics, settings
from sealtune_operator.common import kube
from sealtune_operator.common.conditions import Manifest
from sealtune_operator.common.reconciler import Indexes, Reconciler, Retry, key_of, one
from sealtune_operator.finetunejob.handlers import RECONCILER as FINETUNEJOBS
from sealtune_operator.modelserve import render
from sealtune_operator.modelserve import status as st

RECONCILER = Reconciler("ModelServe", "modelserves", st.RULES, metrics.SERVES, finalizer=True)
# Their Deployments, and whether serving pods still exist (the teardown waits for them).
RECONCILER.index_children("serve_deployments", "apps", "v1", "deployments")
RECONCILER.index_children("serve_pods", "", "v1", "pods", whole=False)


@kopf.index(GROUP, VERSION, "modelserves")  # type: ignore[arg-type]
def ms_by_job(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
    """ModelServe names by (namespace, FineTuneJob they serve)."""
    job = ((spec.get("adapter") or {}).get("fineTuneJob") or {}).get("name")
    return {(namespace, job): name} if job else {}


def _digest(children: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(children, sort_keys=True).encode()).hexdigest()


def _isolated(spec: ModelServeSpec) -> tuple[str, str]:
    """NetworkIsolated's reason and message once the NetworkPolicy is applied."""
    access = spec.access
    peers = len(access.namespaces) + len(access.pod_selectors) + len(access.cidrs)
    if not peers:
        return "IngressRestricted", "egress denied; no ingress allowed (spec.access is empty)"
    port = render.SERVING_PORT
    message = f"egress denied; ingress on port {port} only from {peers} peer(s) in spec.access"
    return "IngressRestricted", message


def reconcile(body: Manifest, ix: Indexes) -> str:
    """Resolve the adapter; once it is ready apply NetworkPolicy, ConfigMap, SA, Deployment,
    Service and PDB in that order, and map the Deployment to status."""
    key = key_of(body)
    generation = int(body["metadata"].get("generation", 1))
    spec = ModelServeSpec.model_validate(body.get("spec") or {})
    job = None
    if spec.adapter.fine_tune_job is not None:
        job = one(ix[FINETUNEJOBS.objects], (key[0], spec.adapter.fine_tune_job.name))
    adapter = st.resolve_adapter(spec, job)
    current = RECONCILER.current(key, body)
    deploy = one(ix["serve_deployments"], key)
    edit = st.RULES.edit(current, generation)
    if adapter.ref is None:
        if deploy is None and not current.get("deploymentName"):
            RECONCILER.write_status(body, st.waiting_status(current, generation, adapter))
            return "waiting"
        # Already serving an earlier adapter: keep it, but access changes apply at once.
        np = render.network_policy(body, spec)
        RECONCILER.write_children(body, edit, [np], kube.apply, _isolated(spec))
        message = adapter.message + "; still serving the adapter rolled out before"
        status = edit.set("AdapterReady", False, adapter.reason, message).status
        RECONCILER.write_status(body, st.serve_status(status, generation, spec.replicas, deploy))
        return "waiting"
    children = render.children(body, spec, adapter.ref, settings.current())
    digest = _digest(children)
    memo = RECONCILER.memo[key]
    if memo.get("applied") != digest or deploy is None:
        RECONCILER.write_children(body, edit, children, kube.apply, _isolated(spec))
        if spec.replicas <= 1:
            kube.delete("PodDisruptionBudget", key[0], render.Names(key[1]).pod_disruption_budget)
        memo["applied"] = digest
        result = "applied"
    else:
        result = "unchanged"
    edit.set("AdapterReady", True, adapter.reason, adapter.message)
    edit.set("ResourcesReady", True, "Applied", "config, service account, Deployment, Service")
    status = edit.status
    status["endpoint"] = render.endpoint(body)
    status["deploymentName"] = render.Names(key[1]).deployment
    if adapter.ref.sha256:
        status["adapterSha256"] = adapter.ref.sha256
    RECONCILER.write_status(body, st.serve_status(status, generation, spec.replicas, deploy))
    return result


def refresh(body: Manifest, current: Manifest, ix: Indexes) -> Manifest | None:
    """Phase and ready replicas from the Deployment."""
    if not current.get("deploymentName"):
        return None  # not rolled out yet; reconcile writes the first status
    replicas = int((body.get("spec") or {}).get("replicas", 1))
    generation = int(body["metadata"].get("generation", 1))
    deploy = one(ix["serve_deployments"], key_of(body))
    return st.serve_status(current, generation, replicas, deploy)


def teardown(body: Manifest, ix: Indexes) -> None:
    """Stop the serving pods first, then remove the other children, NetworkPolicy last."""
    namespace, name = key_of(body)
    names = render.Names(name)
    kube.delete("Deployment", namespace, names.deployment, propagation="Foreground")
    if ix["serve_pods"].get((namespace, name)):
        # Keep the isolating NetworkPolicy until no serving pod is left.
        raise Retry("waiting for serving pods to terminate", delay=2)
    kube.delete("PodDisruptionBudget", namespace, names.pod_disruption_budget)
    kube.delete("Service", namespace, names.service)
    kube.delete("ConfigMap", namespace, names.config_map)
    kube.delete("ServiceAccount", namespace, names.service_account)
    kube.delete("NetworkPolicy", namespace, names.network_policy)


RECONCILER.watch(reconcile, refresh, teardown)
RECONCILER.watch_children("apps", "v1", "deployments")


@kopf.on.event(GROUP, VERSION, "finetunejobs")  # type: ignore[arg-type]
def on_finetunejob_event(namespace: str, name: str, **ix: Any) -> None:
    """A FineTuneJob changed: re-resolve the ModelServes that serve its adapter."""
    for serve in list(ix["ms_by_job"].get((namespace, name)) or []):
        body = one(ix[RECONCILER.objects], (namespace, serve))
        if body is not None:
            RECONCILER.handle(None, body, ix, force=True)
