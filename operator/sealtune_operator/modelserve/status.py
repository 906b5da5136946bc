"""Pure status mapping for ModelServe: the referenced FineTuneJob and the Deployment in,
phase and conditions out (Events follow from `RULES`, shared with FineTuneJob).

Conditions (positive polarity: True is good):
  NetworkIsolated  True once the ingress-only NetworkPolicy exists (before any pod).
  AdapterReady     True once the adapter is resolved; False (with the reason) while the
                   referenced FineTuneJob has no servable result.
  ResourcesReady   True once every child was applied; False with the API's reason if not.
  Available        True when ready replicas >= wanted replicas.
  Ready            explains the phase (Pending, Ready, Degraded, Failed).

`Degraded` needs "was available": a first rollout is Pending until every pod is ready.
"""

from __future__ import annotations

from dataclasses import dataclass

from sealtune_api.finetunejob import FineTuneJobSpec
from sealtune_api.modelserve import ModelServeSpec
from sealtune_operator.common.conditions import Manifest, Rules, condition
from sealtune_operator.modelserve.render import AdapterRef

# AdapterReady reasons that will not resolve by waiting (the job must be re-run).
TERMINAL_ADAPTER_REASONS = ("FineTuneJobFailed", "AuditFailed")

RULES = Rules(
    ok_phases=frozenset({"Ready"}),
    order=("NetworkIsolated", "AdapterReady", "ResourcesReady", "Available", "Ready"),
    quiet_reasons=frozenset({"Creating", "WaitingForPods"}),
    warning_reasons=frozenset({*TERMINAL_ADAPTER_REASONS, "ProgressDeadlineExceeded"}),
    must_hold=frozenset({"NetworkIsolated", "ResourcesReady"}),
)
transitions = RULES.transitions


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
        ref = AdapterRef(src.pvc, src.key_secret)
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
    ref = AdapterRef(out.pvc, out.key_secret, sha, job_spec.training.rank)
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
    text = f"{ready}/{replicas} serving pods ready"
    if ready >= replicas:
        return DeploymentState("Ready", ready, True, "ReplicasReady", text)
    progressing = _deploy_condition(deploy, "Progressing")
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        message = (progressing.get("message") or "the rollout made no progress").strip()
        phase = "Degraded" if was_available else "Failed"
        return DeploymentState(phase, ready, False, "ProgressDeadlineExceeded", message)
    if not was_available:
        return DeploymentState("Pending", ready, False, "WaitingForPods", text)
    return DeploymentState("Degraded", ready, False, "ReplicasUnavailable", text)


def waiting_status(
    current: Manifest, generation: int, adapter: AdapterState, at: str | None = None
) -> Manifest:
    """Nothing deployed and no adapter yet: Pending (Failed if it never will be ready)."""
    phase = "Failed" if adapter.reason in TERMINAL_ADAPTER_REASONS else "Pending"
    edit = RULES.edit(current, generation, at).set(
        "AdapterReady", False, adapter.reason, adapter.message
    )
    return {**edit.summarize(phase, adapter.reason, adapter.message).status, "readyReplicas": 0}


def serve_status(
    current: Manifest,
    generation: int,
    replicas: int,
    deploy: Manifest | None,
    at: str | None = None,
) -> Manifest:
    """Phase, ready replicas and Available from the Deployment (children already applied)."""
    was_available = (
        condition(current, "Available").get("status") == "True"
        or current.get("phase") in RULES.serving_phases
    )
    obs = observe_deployment(deploy, replicas, was_available)
    edit = RULES.edit(current, generation, at)
    edit.set("Available", obs.available, obs.reason, obs.message)
    status = edit.summarize(obs.phase, obs.reason, obs.message).status
    return {**status, "replicas": replicas, "readyReplicas": obs.ready}
