"""Pure status mapping for ModelServe: the referenced FineTuneJob and the Deployment in,
conditions, phase and Events out. Shares `set_condition`/`differs` with `status`.

Conditions:
  NetworkIsolated  True once the ingress-only NetworkPolicy exists (before any pod).
  AdapterNotReady  True while the referenced FineTuneJob has no servable result (reason
                   says why); False once the adapter is resolved.
  ResourcesReady   True once every child was applied; False with the API's reason if not.
  Available        True when ready replicas >= wanted replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sealtune_api.finetunejob import FineTuneJobSpec
from sealtune_api.modelserve import ModelServeSpec
from sealtune_operator.render.serve import AdapterRef
from sealtune_operator.status import now, set_condition
from sealtune_operator.status import setup_status as _setup_status

Manifest = dict[str, Any]

# AdapterNotReady reasons that will not resolve by waiting (the job must be re-run).
TERMINAL_ADAPTER_REASONS = ("FineTuneJobFailed", "AuditFailed")
_ORDER = ("NetworkIsolated", "AdapterNotReady", "ResourcesReady", "Available")


@dataclass(frozen=True)
class AdapterState:
    """The adapter to serve, or why there is none yet."""

    ref: AdapterRef | None
    reason: str
    message: str


def resolve_adapter(spec: ModelServeSpec, job: Manifest | None) -> AdapterState:
    """Where the adapter is; for a FineTuneJob source only once it succeeded and passed audit."""
    src = spec.adapter
    if src.pvc is not None and src.key_secret is not None:
        ref = AdapterRef(src.pvc.claim_name, src.pvc.path, src.key_secret)
        return AdapterState(ref, "AdapterReady", "adapter from the PVC in spec.adapter")
    job_name = src.fine_tune_job.name if src.fine_tune_job else ""
    if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
        return AdapterState(
            None, "FineTuneJobNotFound", f"FineTuneJob {job_name!r} does not exist (yet)"
        )
    status = job.get("status") or {}
    phase = status.get("phase") or "Pending"
    audit = status.get("audit") or {}
    if phase == "Failed":
        if audit.get("verdict") == "failed":
            why = "; ".join(str(r) for r in audit.get("reasons") or []) or "thresholds exceeded"
            return AdapterState(
                None,
                "AuditFailed",
                f"FineTuneJob {job_name!r} failed its memorization audit ({why}); its adapter "
                "is never served",
            )
        return AdapterState(
            None, "FineTuneJobFailed", f"FineTuneJob {job_name!r} failed; re-run it to serve"
        )
    if phase != "Succeeded":
        return AdapterState(
            None,
            "FineTuneJobRunning",
            f"waiting for FineTuneJob {job_name!r} to succeed (phase {phase})",
        )
    if audit.get("verdict") != "passed":
        return AdapterState(
            None,
            "AuditFailed",
            f"FineTuneJob {job_name!r} succeeded without a passed memorization audit",
        )
    sha = (status.get("output") or {}).get("sha256")
    try:
        job_spec = FineTuneJobSpec.model_validate(job.get("spec") or {})
    except ValueError:
        return AdapterState(
            None, "FineTuneJobFailed", f"FineTuneJob {job_name!r} has an unreadable spec"
        )
    out = job_spec.output
    ref = AdapterRef(out.pvc.claim_name, out.pvc.path, out.key_secret, sha, job_spec.training.rank)
    return AdapterState(
        ref, "AdapterReady", f"adapter of FineTuneJob {job_name!r} (sha256 {str(sha)[:12]})"
    )


@dataclass(frozen=True)
class DeploymentState:
    phase: str
    ready: int
    available: bool
    reason: str
    message: str


def _deploy_condition(deploy: Manifest, ctype: str) -> Manifest:
    for cond in (deploy.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def observe_deployment(
    deploy: Manifest | None, replicas: int, was_available: bool
) -> DeploymentState:
    """Map the serving Deployment to phase, ready count and the Available condition."""
    if deploy is None:
        return DeploymentState("Pending", 0, False, "Creating", "creating the serving Deployment")
    status = deploy.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    if ready >= replicas:
        text = f"{ready}/{replicas} serving pods ready"
        return DeploymentState("Ready", ready, True, "ReplicasReady", text)
    progressing = _deploy_condition(deploy, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        message = (progressing.get("message") or "the rollout made no progress").strip()
        return DeploymentState(
            "Failed" if ready == 0 else "Degraded",
            ready,
            False,
            "ProgressDeadlineExceeded",
            message,
        )
    text = f"{ready}/{replicas} serving pods ready"
    if ready == 0 and not was_available:
        return DeploymentState("Pending", ready, False, "WaitingForPods", text)
    return DeploymentState("Degraded", ready, False, "ReplicasUnavailable", text)


def _sorted(conds: list[Manifest]) -> list[Manifest]:
    return sorted(
        conds, key=lambda c: _ORDER.index(c["type"]) if c["type"] in _ORDER else len(_ORDER)
    )


def condition(status: Manifest, ctype: str) -> Manifest:
    return next((c for c in status.get("conditions") or [] if c.get("type") == ctype), {})


def waiting_status(
    current: Manifest, generation: int, adapter: AdapterState, at: str | None = None
) -> Manifest:
    """Nothing deployed and no adapter yet: Pending (Failed if it never will be ready)."""
    at = at or now()
    conds = set_condition(
        list(current.get("conditions") or []),
        "AdapterNotReady",
        "True",
        adapter.reason,
        adapter.message,
        generation,
        at,
    )
    phase = "Failed" if adapter.reason in TERMINAL_ADAPTER_REASONS else "Pending"
    return {
        **current,
        "phase": phase,
        "observedGeneration": generation,
        "conditions": _sorted(conds),
        "readyReplicas": 0,
    }


def setup_status(
    current: Manifest,
    generation: int,
    ctype: str,
    ok: bool,
    reason: str,
    message: str,
    at: str | None = None,
) -> Manifest:
    """Record one setup step (NetworkIsolated, ResourcesReady, AdapterNotReady)."""
    # AdapterNotReady is the one condition whose "good" state is False.
    true = ok != (ctype == "AdapterNotReady")
    out = _setup_status(current, generation, ctype, true, reason, message, at)
    return {**out, "conditions": _sorted(out["conditions"])}


def serve_status(
    current: Manifest,
    generation: int,
    replicas: int,
    deploy: Manifest | None,
    at: str | None = None,
) -> Manifest:
    """Phase, ready replicas and Available from the Deployment (children already applied)."""
    at = at or now()
    was_available = condition(current, "Available").get("status") == "True"
    obs = observe_deployment(deploy, replicas, was_available)
    conds = set_condition(
        list(current.get("conditions") or []),
        "Available",
        "True" if obs.available else "False",
        obs.reason,
        obs.message,
        generation,
        at,
    )
    return {
        **current,
        "phase": obs.phase,
        "observedGeneration": generation,
        "conditions": _sorted(conds),
        "replicas": replicas,
        "readyReplicas": obs.ready,
    }


def transitions(before: Manifest, after: Manifest) -> list[tuple[str, str, str]]:
    """(event type, reason, message) for every condition that changed status or reason."""
    events: list[tuple[str, str, str]] = []
    old = {c["type"]: c for c in before.get("conditions") or []}
    for cond in after.get("conditions") or []:
        prev = old.get(cond["type"])
        if prev and prev.get("status") == cond["status"] and prev.get("reason") == cond["reason"]:
            continue
        ctype, value = cond["type"], cond["status"]
        if ctype == "Available" and value == "False" and not prev:
            continue  # a new Deployment is not available yet: not news
        if ctype == "AdapterNotReady":
            bad = value == "True" and cond["reason"] in TERMINAL_ADAPTER_REASONS
        else:
            bad = value == "False"
        events.append(
            ("Warning" if bad else "Normal", cond["reason"], cond.get("message") or ctype)
        )
    if before.get("phase") != after.get("phase"):
        phase = after.get("phase")
        events.append(
            (
                "Warning" if phase in ("Degraded", "Failed") else "Normal",
                f"Phase{phase}",
                f"phase is {phase}",
            )
        )
    return events
