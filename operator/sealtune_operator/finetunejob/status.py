"""The one place that maps child state (Job, pods, termination message) to CR status.

Everything here is pure: objects in, a status dict out. The handlers decide when to call
it and whether the result differs from what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sealtune_api.finetunejob import (
    AuditStatus,
    FineTuneJobStatus,
    OutputStatus,
    PrivacyStatus,
    ProgressStatus,
)
from sealtune_api.summary import TrainerSummary

Manifest = dict[str, Any]

# Conditions owned by the reference checks and child creation, not by the Job.
SETUP_CONDITIONS = ("NetworkIsolated", "ResourcesReady")
# Container waiting reasons that leave a pod stuck; each becomes a readable status.
_WAITING_REASONS = {
    "ImagePullBackOff": "the trainer image cannot be pulled; mirror it into the cluster registry",
    "ErrImagePull": "the trainer image cannot be pulled; mirror it into the cluster registry",
    "InvalidImageName": "the trainer image name is invalid",
    "CreateContainerConfigError": "the pod cannot be configured (often a missing Secret or key)",
    "CreateContainerError": "the container cannot be created",
}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Observation:
    """What the children say: a phase, the reason for it, and the trainer's summary."""

    phase: str
    reason: str
    message: str
    summary: TrainerSummary | None = None
    start_time: str | None = None
    completion_time: str | None = None


def _job_condition(job: Manifest, ctype: str) -> Manifest | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def _container_statuses(pod: Manifest) -> list[Manifest]:
    return list((pod.get("status") or {}).get("containerStatuses") or [])


def termination_summary(pods: list[Manifest]) -> TrainerSummary | None:
    """The trainer's summary from the newest terminated container, if it wrote one."""
    newest: tuple[str, TrainerSummary] | None = None
    for pod in pods:
        for cs in _container_statuses(pod):
            term = (cs.get("state") or {}).get("terminated") or {}
            message = term.get("message")
            parsed = TrainerSummary.parse(message) if message else None
            if parsed is not None:
                finished = str(term.get("finishedAt") or "")
                if newest is None or finished >= newest[0]:
                    newest = (finished, parsed)
    return newest[1] if newest else None


def _terminated(pods: list[Manifest]) -> Manifest | None:
    for pod in sorted(
        pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")), reverse=True
    ):
        for cs in _container_statuses(pod):
            term = (cs.get("state") or {}).get("terminated")
            if term:
                return dict(term)
    return None


def _stuck(pods: list[Manifest]) -> tuple[str, str] | None:
    """A reason and message when a pod cannot start (image, Secret, scheduling)."""
    for pod in pods:
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
                "PodScheduled",
                "False",
                "Unschedulable",
            ):
                return "Unschedulable", (
                    "no node can run the trainer: " + (cond.get("message") or "").strip()
                ).strip()
        for cs in _container_statuses(pod):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in _WAITING_REASONS:
                detail = (waiting.get("message") or "").strip()
                text = _WAITING_REASONS[reason] + (f": {detail}" if detail else "")
                if reason == "CreateContainerConfigError" and "secret" in detail.lower():
                    return "SecretNotFound", text
                return ("ImagePullBackOff" if reason == "ErrImagePull" else reason), text
    return None


def observe(job: Manifest | None, pods: list[Manifest]) -> Observation:
    """Map a batch/v1 Job and its pods to the FineTuneJob's phase and reason."""
    if job is None:
        return Observation("Pending", "Creating", "creating the trainer workload")
    status = job.get("status") or {}
    start = status.get("startTime")
    summary = termination_summary(pods)
    if _job_condition(job, "Complete"):
        done = status.get("completionTime")
        if summary is None and _terminated(pods) is None:
            # The Job is Complete but its pod's terminated state is not visible (the pod
            # was deleted after success, or the Job event came first): not evidence of a
            # missing summary. `job_status` keeps a finished phase; otherwise we wait.
            return Observation(
                "Running", "CollectingSummary", "the trainer finished; reading its summary"
            )
        if summary is None or summary.phase != "Succeeded":
            # Never report success without the trainer's own word for it.
            return Observation(
                "Failed",
                "NoSummary",
                "the trainer exited 0 but left no readable summary (termination message); "
                "see the trainer pod's log",
                summary,
                start,
                done,
            )
        audit = summary.audit
        if audit is not None and audit.verdict == "failed":
            reasons = "; ".join(audit.reasons) or "thresholds exceeded"
            return Observation(
                "Failed",
                "AuditFailed",
                f"memorization audit failed: {reasons}",
                summary,
                start,
                done,
            )
        return Observation(
            "Succeeded",
            "TrainingComplete",
            "the adapter is trained and encrypted",
            summary,
            start,
            done,
        )
    failed = _job_condition(job, "Failed")
    if failed:
        term = _terminated(pods) or {}
        finished = status.get("completionTime") or failed.get("lastTransitionTime")
        if term.get("reason") == "OOMKilled":
            return Observation(
                "Failed",
                "OOMKilled",
                "the trainer ran out of memory; raise resources.memory or lower "
                "training.microBatchSize",
                summary,
                start,
                finished,
            )
        if failed.get("reason") == "DeadlineExceeded":
            return Observation(
                "Failed",
                "DeadlineExceeded",
                "the job ran past activeDeadlineSeconds",
                summary,
                start,
                finished,
            )
        error = summary.error if summary is not None else None
        if error is not None:
            return Observation(
                "Failed",
                error.reason,
                error.message,
                summary,
                start,
                finished,
            )
        code = term.get("exitCode")
        detail = f" (exit code {code})" if code is not None else ""
        return Observation(
            "Failed",
            str(failed.get("reason") or "TrainerFailed"),
            (failed.get("message") or "the trainer failed") + detail,
            summary,
            start,
            finished,
        )
    if (job.get("spec") or {}).get("suspend"):
        return Observation("Queued", "QueuedInKueue", "waiting for Kueue to admit the job")
    stuck = _stuck(pods)
    if stuck:
        return Observation("Pending", stuck[0], stuck[1], summary, start)
    if any((p.get("status") or {}).get("phase") == "Running" for p in pods):
        return Observation("Running", "TrainerRunning", "the trainer is running", summary, start)
    return Observation(
        "Pending", "WaitingForPod", "waiting for the trainer pod to start", summary, start
    )


def set_condition(
    conditions: list[Manifest],
    ctype: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    at: str,
) -> list[Manifest]:
    """Upsert one condition, keeping lastTransitionTime when the status did not flip."""
    out = [dict(c) for c in conditions if c.get("type") != ctype]
    previous = next((c for c in conditions if c.get("type") == ctype), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status else at
    out.append(
        {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": since,
        }
    )
    order = [
        "NetworkIsolated",
        "ResourcesReady",
        "Queued",
        "Running",
        "Succeeded",
        "Failed",
        "AuditPassed",
    ]
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def _summary_fields(summary: TrainerSummary | None) -> dict[str, Any]:
    """Status sections from the trainer's typed summary (numbers and digests only)."""
    if summary is None:
        return {}
    out = FineTuneJobStatus()
    if summary.privacy is not None:
        pv = summary.privacy
        out.privacy = PrivacyStatus(
            dp_enabled=pv.dp_enabled and pv.epsilon is not None,
            epsilon_spent=pv.epsilon,
            target_epsilon=pv.target_epsilon,
            delta=pv.delta,
            noise_multiplier=pv.noise_multiplier,
            accountant=pv.accountant,
            unit=pv.unit,
            group_epsilon=pv.group_epsilon or None,
            ledger=pv.ledger or None,
        )
    if summary.audit is not None:
        out.audit = AuditStatus(
            verdict=summary.audit.verdict,
            canary_exposure=summary.audit.canary_exposure,
            epsilon_lower_bound=summary.audit.epsilon_lower_bound,
            reasons=summary.audit.reasons,
        )
    if summary.adapter is not None:
        out.output = OutputStatus(path=summary.adapter.path, sha256=summary.adapter.sha256)
    if summary.steps is not None:
        total = summary.total_steps or summary.steps
        out.progress = ProgressStatus(
            step=summary.steps,
            total_steps=total,
            percent=int(100 * summary.steps / total) if total else 100,
            epoch=float(summary.epochs or 0),
        )
    return out.model_dump(by_alias=True, exclude_none=True, exclude_unset=True, mode="json")


def job_status(
    current: Manifest, generation: int, job_name: str, obs: Observation, at: str | None = None
) -> Manifest:
    """The full status for a FineTuneJob whose children exist, from the observation."""
    at = at or now()
    if obs.reason == "CollectingSummary" and current.get("phase") in ("Succeeded", "Failed"):
        return dict(current)  # a finished job never regresses because its pod went away
    conds = list(current.get("conditions") or [])
    phase = obs.phase
    conds = set_condition(
        conds,
        "Queued",
        "True" if phase == "Queued" else "False",
        obs.reason if phase == "Queued" else "Admitted",
        obs.message if phase == "Queued" else "",
        generation,
        at,
    )
    running = phase == "Running"
    conds = set_condition(
        conds, "Running", "True" if running else "False", obs.reason, obs.message, generation, at
    )
    succeeded = phase == "Succeeded"
    conds = set_condition(
        conds,
        "Succeeded",
        "True" if succeeded else "False",
        obs.reason,
        obs.message if succeeded else "",
        generation,
        at,
    )
    failed = phase == "Failed"
    conds = set_condition(
        conds,
        "Failed",
        "True" if failed else "False",
        obs.reason if failed else "NotFailed",
        obs.message if failed else "",
        generation,
        at,
    )
    audit = obs.summary.audit if obs.summary is not None else None
    if audit is not None:
        ok = audit.verdict == "passed"
        conds = set_condition(
            conds,
            "AuditPassed",
            "True" if ok else "False",
            "AuditPassed" if ok else "AuditFailed",
            "memorization audit passed" if ok else obs.message,
            generation,
            at,
        )
    status: Manifest = {
        "phase": phase,
        "observedGeneration": generation,
        "conditions": conds,
        "jobName": job_name,
        **_summary_fields(obs.summary),
    }
    if obs.start_time:
        status["startTime"] = obs.start_time
    if obs.completion_time:
        status["completionTime"] = obs.completion_time
    return status


def blocked_status(
    current: Manifest, generation: int, reason: str, message: str, at: str | None = None
) -> Manifest:
    """Status of a job whose references failed their checks: nothing was created."""
    at = at or now()
    conds = list(current.get("conditions") or [])
    conds = set_condition(conds, "ResourcesReady", "False", reason, message, generation, at)
    return {"phase": "Pending", "observedGeneration": generation, "conditions": conds}


def setup_status(
    current: Manifest,
    generation: int,
    ctype: str,
    ok: bool,
    reason: str,
    message: str,
    at: str | None = None,
) -> Manifest:
    """Record one setup step (NetworkIsolated, ResourcesReady) in the conditions."""
    at = at or now()
    conds = set_condition(
        list(current.get("conditions") or []),
        ctype,
        "True" if ok else "False",
        reason,
        message,
        generation,
        at,
    )
    return {
        **current,
        "observedGeneration": generation,
        "conditions": conds,
        "phase": current.get("phase") or "Pending",
    }


def transitions(before: Manifest, after: Manifest) -> list[tuple[str, str, str]]:
    """(event type, reason, message) for every condition or phase that changed."""
    events: list[tuple[str, str, str]] = []
    old = {c["type"]: c for c in before.get("conditions") or []}
    for cond in after.get("conditions") or []:
        prev = old.get(cond["type"])
        if prev and prev.get("status") == cond["status"] and prev.get("reason") == cond["reason"]:
            continue
        if cond["status"] != "True" and cond["type"] not in (*SETUP_CONDITIONS, "AuditPassed"):
            continue  # "not running" / "not failed" are not news
        warning = cond["type"] == "Failed" or (cond["status"] == "False")
        events.append(
            (
                "Warning" if warning else "Normal",
                cond["reason"],
                cond.get("message") or f"{cond['type']} is {cond['status']}",
            )
        )
    if before.get("phase") != after.get("phase") and not events:
        events.append(("Normal", f"Phase{after.get('phase')}", f"phase is {after.get('phase')}"))
    return events


def differs(stored: Manifest, computed: Manifest) -> bool:
    """True when writing `computed` would change what is stored (ignoring Kopf's fields)."""
    return any(stored.get(k) != v for k, v in computed.items())
