"""The one place that maps a FineTuneJob's children (Job, pods, termination message) to its
status. Pure: objects in, a status dict out; the handlers decide when to call it.

The phase only moves forward: Pending -> (Queued ->) Running -> Succeeded | Failed. Between a
pod's exit and the Job's verdict the job stays Running (`TrainerExited`); a pod that failed
and is retried keeps it Running too (`Retrying`), counted in `status.attempts`. The `Ready`
condition explains the phase (the REASON and MESSAGE printer columns); stuck pods
(image pulls, scheduling, a pod waiting longer than the start timeout) get reasons that
post Warning Events.
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
from sealtune_api.summary import SummaryAudit, TrainerSummary
from sealtune_operator.common.conditions import Manifest, Rules

# Container waiting reasons that leave a pod stuck; each becomes a readable status.
_WAITING_REASONS = {
    "ImagePullBackOff": "the trainer image cannot be pulled; mirror it into the cluster registry",
    "ErrImagePull": "the trainer image cannot be pulled; mirror it into the cluster registry",
    "InvalidImageName": "the trainer image name is invalid",
    "CreateContainerConfigError": "the pod cannot be configured (often a missing Secret or key)",
    "CreateContainerError": "the container cannot be created",
}
STUCK_REASONS = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
    | {"SecretNotFound", "Unschedulable", "PodStuck"}
)
# How long a trainer pod may wait to start before it counts as stuck (settings override it).
POD_START_TIMEOUT_SECONDS = 600.0
FINISHED = ("Succeeded", "Failed")

RULES = Rules(
    ok_phases=frozenset({"Succeeded"}),
    order=(
        "NetworkIsolated",
        "ResourcesReady",
        "Queued",
        "Running",
        "Succeeded",
        "Failed",
        "AuditPassed",
        "Ready",
    ),
    # The per-phase conditions mirror `Ready`, which posts the Events for them.
    silent=frozenset({"Queued", "Running", "Succeeded", "Failed"}),
    # Steps on the way that are not news (the next state is).
    quiet_reasons=frozenset({"Creating", "WaitingForPod", "TrainerExited", "CollectingSummary"}),
    warning_reasons=STUCK_REASONS | {"Retrying"},
    must_hold=frozenset({"NetworkIsolated", "ResourcesReady", "AuditPassed"}),
)
transitions = RULES.transitions


@dataclass
class Observation:
    """What the children say: a phase, the reason for it, and the trainer's summary."""

    phase: str
    reason: str
    message: str
    # The trainer's own word, once its pod has terminated (and the Job has a verdict).
    summary: TrainerSummary | None = None
    # From the Job.
    start_time: str | None = None
    completion_time: str | None = None
    # Trainer pods started so far (retries after failed pods included).
    attempts: int = 0
    # Seconds until this observation may change by itself (a waiting pod becomes stuck).
    recheck_in: float | None = None


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


def _by_age(pods: list[Manifest]) -> list[Manifest]:
    """Newest first."""
    return sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")), reverse=True)


def _terminated(pods: list[Manifest]) -> Manifest | None:
    """The terminated state of the newest pod that has one."""
    for pod in _by_age(pods):
        for cs in _container_statuses(pod):
            term = (cs.get("state") or {}).get("terminated")
            if term:
                return dict(term)
    return None


def _exit(term: Manifest) -> str:
    """`OOMKilled, exit code 137` for a terminated state."""
    code = term.get("exitCode")
    parts = [str(term["reason"])] if term.get("reason") else []
    if code is not None:
        parts.append(f"exit code {code}")
    return ", ".join(parts) or "no exit code"


def _stuck(pod: Manifest) -> tuple[str, str] | None:
    """A reason and message when a pod cannot start (image, Secret, scheduling)."""
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


def _waiting_for(pod: Manifest) -> str:
    """The container's waiting reason (ContainerCreating, PodInitializing), or the pod phase."""
    for cs in _container_statuses(pod):
        reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
        if reason:
            return str(reason)
    return str((pod.get("status") or {}).get("phase") or "Pending")


def _seconds_since(stamp: str | None, at: datetime) -> float:
    if not stamp:
        return 0.0
    then = datetime.fromisoformat(stamp)
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (at - then).total_seconds())


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes}m" if minutes else f"{int(seconds)}s"


def attempts(job: Manifest, pods: list[Manifest]) -> int:
    """Trainer pods started so far: the Job's counters, or the pods seen if there are more."""
    status = job.get("status") or {}
    counted = sum(int(status.get(k) or 0) for k in ("active", "succeeded", "failed"))
    return max(counted, len(pods))


def audit_message(audit: SummaryAudit) -> str:
    if audit.verdict == "passed":
        return "memorization audit passed"
    return "memorization audit failed: " + ("; ".join(audit.reasons) or "thresholds exceeded")


def _finished(job: Manifest, pods: list[Manifest], tries: int) -> Observation | None:
    """The Job's verdict (Complete or Failed), or None while it has none."""
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
            message = (
                "the trainer exited 0 but left no readable summary (termination message); "
                "see the trainer pod's log"
            )
            return Observation("Failed", "NoSummary", message, summary, start, done, tries)
        if summary.audit is not None and summary.audit.verdict == "failed":
            message = audit_message(summary.audit)
            return Observation("Failed", "AuditFailed", message, summary, start, done, tries)
        message = "the adapter is trained and encrypted"
        return Observation("Succeeded", "TrainingComplete", message, summary, start, done, tries)
    failed = _job_condition(job, "Failed")
    if not failed:
        return None
    term = _terminated(pods) or {}
    finished = status.get("completionTime") or failed.get("lastTransitionTime")
    error = summary.error if summary is not None else None
    if term.get("reason") == "OOMKilled":
        reason, message = (
            "OOMKilled",
            (
                "the trainer ran out of memory; raise resources.memory or lower "
                "training.microBatchSize"
            ),
        )
    elif failed.get("reason") == "DeadlineExceeded":
        reason, message = "DeadlineExceeded", "the job ran past activeDeadlineSeconds"
    elif error is not None:
        reason, message = error.reason, error.message
    else:
        code = term.get("exitCode")
        detail = f" (exit code {code})" if code is not None else ""
        reason = str(failed.get("reason") or "TrainerFailed")
        message = (failed.get("message") or "the trainer failed") + detail
    if tries > 1:
        message += f" (after {tries} attempts)"
    return Observation("Failed", reason, message, summary, start, finished, tries)


def observe(
    job: Manifest | None,
    pods: list[Manifest],
    at: datetime | None = None,
    start_timeout: float = POD_START_TIMEOUT_SECONDS,
) -> Observation:
    """Map a batch/v1 Job and its pods to the FineTuneJob's phase and reason."""
    if job is None:
        return Observation("Pending", "Creating", "creating the trainer workload")
    at = at or datetime.now(UTC)
    tries = attempts(job, pods)
    verdict = _finished(job, pods, tries)
    if verdict is not None:
        return verdict
    start = (job.get("status") or {}).get("startTime")
    if (job.get("spec") or {}).get("suspend"):
        return Observation("Queued", "QueuedInKueue", "waiting for Kueue to admit the job")
    limit = int((job.get("spec") or {}).get("backoffLimit", 6)) + 1
    attempt = f" (attempt {tries} of {limit})" if tries > 1 else ""
    ordered = _by_age(pods)
    newest = ordered[0] if ordered else None
    earlier = _terminated(ordered[1:])
    # Once a pod has run, the job is Running until the Job's verdict: never Pending again.
    phase = "Running" if tries > 1 or earlier else "Pending"
    if newest is None:
        if tries:
            message = "the trainer pod is gone; waiting for the Job to start the next one"
            return Observation("Running", "Retrying", message, None, start, None, tries)
        return Observation("Pending", "WaitingForPod", "waiting for the trainer pod to start")
    term = _terminated([newest])
    if term is not None:
        if term.get("exitCode") == 0:
            message = "the trainer exited; waiting for the Job to complete"
        else:
            message = (
                f"the trainer pod failed ({_exit(term)}); waiting for the Job to retry or fail"
            )
        return Observation("Running", "TrainerExited", message, None, start, None, tries)
    if (newest.get("status") or {}).get("phase") == "Running":
        message = "the trainer is running" + attempt
        return Observation("Running", "TrainerRunning", message, None, start, None, tries)
    stuck = _stuck(newest)
    if stuck:
        return Observation(phase, stuck[0], stuck[1] + attempt, None, start, None, tries)
    waited = _seconds_since(newest["metadata"].get("creationTimestamp"), at)
    if waited >= start_timeout:
        meta = job.get("metadata") or {}
        message = (
            f"the trainer pod has waited {_duration(waited)} to start ({_waiting_for(newest)}); "
            "a Secret or volume that cannot be mounted is the usual cause: "
            f"kubectl -n {meta.get('namespace')} describe pod -l job-name={meta.get('name')}"
        )
        return Observation(phase, "PodStuck", message + attempt, None, start, None, tries)
    if earlier:
        message = f"the trainer pod failed ({_exit(earlier)}); retrying{attempt}"
        reason = "Retrying"
    else:
        message, reason = "waiting for the trainer pod to start", "WaitingForPod"
    return Observation(phase, reason, message, None, start, None, tries, start_timeout - waited)


def _summary_fields(summary: TrainerSummary | None) -> dict[str, Any]:
    """Status sections from the trainer's typed summary (numbers and digests only)."""
    if summary is None:
        return {}
    out = FineTuneJobStatus()
    if summary.privacy is not None:
        pv = summary.privacy
        shared = pv.model_dump(include=set(PrivacyStatus.model_fields))  # same name, same meaning
        out.privacy = PrivacyStatus(
            **{
                **shared,
                "dp_enabled": pv.dp_enabled and pv.epsilon is not None,
                "epsilon_spent": pv.epsilon,
                "group_epsilon": pv.group_epsilon or None,
                "ledger": pv.ledger or None,
            }
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
    if current.get("phase") in FINISHED and obs.phase not in FINISHED:
        return dict(current)  # a finished job never regresses (e.g. its pod went away)
    phase = obs.phase
    if phase == "Pending" and current.get("phase") == "Running":
        phase = "Running"  # a job that ran is never Pending again
    edit = RULES.edit(current, generation, at)
    # One condition per phase (they mirror `Ready`, which posts the Events); each carries
    # the observation's reason and message, except "not queued" and "not failed".
    quiet = {
        "Queued": ("Admitted", "not waiting in a queue"),
        "Failed": ("NotFailed", "not failed"),
    }
    for ctype in ("Queued", "Running", "Succeeded", "Failed"):
        on = phase == ctype
        reason, message = quiet[ctype] if ctype in quiet and not on else (obs.reason, obs.message)
        edit.set(ctype, on, reason, message)
    audit = obs.summary.audit if obs.summary is not None else None
    if audit is not None:
        ok = audit.verdict == "passed"
        edit.set("AuditPassed", ok, "AuditPassed" if ok else "AuditFailed", audit_message(audit))
    status = edit.summarize(phase, obs.reason, obs.message).status
    status.update(jobName=job_name, **_summary_fields(obs.summary))
    if obs.attempts:
        status["attempts"] = obs.attempts
    if obs.start_time:
        status["startTime"] = obs.start_time
    if obs.completion_time:
        status["completionTime"] = obs.completion_time
    return status
