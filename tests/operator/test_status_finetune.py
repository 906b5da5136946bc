"""Pure-function tests of the FineTuneJob status mapping (no API server needed).

Jobs and pods are built as the API server returns them: a batch/v1 Job with
`status.conditions`, and pods whose `status.containerStatuses[].state.terminated` carries
the trainer's termination message. Summaries are built from the contract's typed models
(`sealtune_api.summary`) and serialised with `to_message()`, as the trainer writes them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.contract.test_summary_contract import FORBIDDEN_KEYS, keys

import sealtune_api.summary as sm
from sealtune_api.finetunejob import FineTuneJobStatus
from sealtune_api.summary import SummaryAudit, TrainerSummary
from sealtune_operator.common.conditions import Event, differs
from sealtune_operator.finetunejob import status as st

Manifest = dict[str, Any]

AT = "2025-03-01T12:00:00Z"
START = "2025-03-01T10:00:00Z"
DONE = "2025-03-01T11:00:00Z"
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)  # START
SHA = "a" * 64
PATH = "adapters/run1/adapter.tar.enc"  # relative to the output PVC
LEDGER = [
    sm.LedgerEntry(statistic="adapter", mechanism="DP-SGD", epsilon=3.5),
    sm.LedgerEntry(statistic="steps, totalSteps, epochs, seconds", mechanism="public"),
    sm.LedgerEntry(statistic="audit (canaries only)", mechanism="post-processing"),
]


def summary(
    *,
    audit: SummaryAudit | None = None,
    steps: int = 120,
    total_steps: int = 120,
    epsilon: float | None = 3.5,
    dp_enabled: bool = True,
) -> TrainerSummary:
    return TrainerSummary(
        job="run1",
        phase="Succeeded",
        privacy=sm.SummaryPrivacy(
            dp_enabled=dp_enabled,
            epsilon=epsilon,
            target_epsilon=4.0 if dp_enabled else None,
            delta=1e-5 if dp_enabled else None,
            noise_multiplier=1.1,
            sample_rate=0.01,
            max_grad_norm=0.1,
            accountant="prv" if dp_enabled else None,
            group_epsilon={"2": 7.4, "5": 21.0, "10": 52.5},
            ledger=LEDGER,
        ),
        steps=steps,
        total_steps=total_steps,
        epochs=2,
        records=sm.SummaryRecords(train=900, held_out=100),
        audit=audit
        if audit is not None
        else SummaryAudit(
            verdict="passed", canaries=10, canary_exposure=1.3, epsilon_lower_bound=0.2
        ),
        adapter=sm.SummaryAdapter(path=PATH, sha256=SHA),
        seconds=61.5,
    )


def job(
    *conditions: tuple[str, str],
    suspend: bool = False,
    complete: bool = False,
    active: int = 0,
    failed: int = 0,
    backoff_limit: int = 2,
) -> Manifest:
    """A batch/v1 Job with True conditions of the given (type, reason) and pod counters."""
    status: Manifest = {"startTime": START, "active": active, "failed": failed}
    if complete:
        status["completionTime"] = DONE
    status["conditions"] = [
        {
            "type": ctype,
            "status": "True",
            "reason": reason,
            "message": f"{ctype}: {reason}",
            "lastTransitionTime": DONE,
        }
        for ctype, reason in conditions
    ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "run1-trainer", "namespace": "team"},
        "spec": {"suspend": suspend, "backoffLimit": backoff_limit},
        "status": status,
    }


def completed_job() -> Manifest:
    return job(("SuccessCriteriaMet", "CompletionsReached"), ("Complete", ""), complete=True)


def failed_job(reason: str = "BackoffLimitExceeded") -> Manifest:
    return job(("Failed", reason))


def pod(
    name: str = "run1-trainer-abcde",
    *,
    phase: str = "Succeeded",
    created: str = START,
    message: str | None = None,
    exit_code: int = 0,
    reason: str = "Completed",
    finished: str = DONE,
    state: Manifest | None = None,
    conditions: list[Manifest] | None = None,
) -> Manifest:
    """A trainer pod; terminated (with `message` as the termination message) unless `state`."""
    if state is None:
        terminated: Manifest = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": created,
            "finishedAt": finished,
        }
        if message is not None:
            terminated["message"] = message
        state = {"terminated": terminated}
    status: Manifest = {
        "phase": phase,
        "containerStatuses": [
            {"name": "trainer", "image": "registry.local/trainer", "ready": False, "state": state}
        ],
    }
    if conditions is not None:
        status["conditions"] = conditions
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team", "creationTimestamp": created},
        "status": status,
    }


def validated(status: Manifest) -> FineTuneJobStatus:
    """The status as the CRD's model reads it; top-level keys must all be declared fields
    (FineTuneJobStatus allows extras, its nested sections do not)."""
    declared = {f.alias or name for name, f in FineTuneJobStatus.model_fields.items()}
    assert set(status) <= declared, set(status) - declared
    return FineTuneJobStatus.model_validate(status)


def condition(status: Manifest, ctype: str) -> Manifest:
    return next(c for c in status["conditions"] if c["type"] == ctype)


# ----------------------------------------------------------------------------- observe


def test_no_job_yet_is_pending() -> None:
    obs = st.observe(None, [])
    assert (obs.phase, obs.reason) == ("Pending", "Creating")


def test_complete_job_with_summary_succeeds() -> None:
    s = summary()
    obs = st.observe(completed_job(), [pod(message=s.to_message())])
    assert (obs.phase, obs.reason) == ("Succeeded", "TrainingComplete")
    assert obs.summary == s
    assert (obs.start_time, obs.completion_time) == (START, DONE)


@pytest.mark.parametrize(
    "message",
    [
        None,
        "",
        "not json at all",
        "[1, 2, 3]",
        # The old, untyped contract: no job/phase, and the private loss and counts.
        '{"steps": 120, "finalLoss": 1.234, "redactions": {"PHONE": 3}}',
        # A valid summary with a field the contract no longer has is not a summary.
        summary().to_message()[:-1] + ',"finalLoss":1.2}',
        # Cut short (as a message over 4096 bytes would be by the kubelet).
        summary().to_message()[:200],
        # The trainer's word is "Failed" or "Stopped", not success.
        TrainerSummary.failure("run1", "TrainerError", "boom").to_message(),
        TrainerSummary(job="run1", phase="Stopped", steps=3).to_message(),
    ],
    ids=[
        "absent",
        "empty",
        "garbage",
        "not-an-object",
        "old-contract",
        "removed-field",
        "truncated",
        "failed-summary",
        "stopped-summary",
    ],
)
def test_complete_job_without_a_success_summary_fails(message: str | None) -> None:
    obs = st.observe(completed_job(), [pod(message=message)])
    assert (obs.phase, obs.reason) == ("Failed", "NoSummary")
    assert "summary" in obs.message
    status = st.job_status({}, 1, "run1-trainer", obs, at=AT)
    assert status["phase"] == "Failed"
    assert condition(status, "Failed")["reason"] == "NoSummary"
    assert condition(status, "Succeeded")["status"] == "False"
    for section in ("privacy", "audit", "output"):
        assert section not in status
    validated(status)


def test_complete_job_without_pods_is_not_success() -> None:
    obs = st.observe(completed_job(), [])
    assert obs.phase != "Succeeded" and obs.reason == "CollectingSummary"


def test_complete_job_with_failed_audit_fails_with_the_reasons() -> None:
    reasons = ["mean canary exposure 9.6 bits > 8.0", "epsilon lower bound 5.1 > 3.5"]
    audit = SummaryAudit(
        verdict="failed", canaries=10, canary_exposure=9.6, epsilon_lower_bound=5.1, reasons=reasons
    )
    obs = st.observe(completed_job(), [pod(message=summary(audit=audit).to_message())])
    assert (obs.phase, obs.reason) == ("Failed", "AuditFailed")
    assert obs.message == "memorization audit failed: " + "; ".join(reasons)
    status = st.job_status({}, 1, "run1-trainer", obs, at=AT)
    assert condition(status, "Failed")["status"] == "True"
    assert condition(status, "Failed")["message"] == obs.message
    passed = condition(status, "AuditPassed")
    assert (passed["status"], passed["reason"]) == ("False", "AuditFailed")
    assert status["audit"] == {
        "verdict": "failed",
        "canaryExposure": 9.6,
        "epsilonLowerBound": 5.1,
        "reasons": reasons,
    }
    validated(status)


def test_failed_audit_without_reasons_still_says_why() -> None:
    audit = SummaryAudit(verdict="failed")
    obs = st.observe(completed_job(), [pod(message=summary(audit=audit).to_message())])
    assert obs.reason == "AuditFailed" and "thresholds exceeded" in obs.message


def test_failed_job_takes_the_reason_from_the_error_summary() -> None:
    err = TrainerSummary.failure("run1", "DatasetDecryptError", "the dataset key does not match")
    p = pod(phase="Failed", message=err.to_message(), exit_code=5, reason="Error")
    obs = st.observe(failed_job("PodFailurePolicy"), [p])
    assert (obs.phase, obs.reason) == ("Failed", "DatasetDecryptError")
    assert obs.message == "the dataset key does not match"
    assert obs.start_time == START
    assert obs.completion_time == DONE  # the Failed condition's transition time
    status = st.job_status({}, 1, "run1-trainer", obs, at=AT)
    assert condition(status, "Failed")["reason"] == "DatasetDecryptError"
    assert "privacy" not in status and "audit" not in status
    validated(status)


def test_failed_job_without_summary_reports_the_exit_code() -> None:
    p = pod(phase="Failed", message="garbage", exit_code=1, reason="Error")
    obs = st.observe(failed_job(), [p])
    assert (obs.phase, obs.reason) == ("Failed", "BackoffLimitExceeded")
    assert obs.message.endswith("(exit code 1)")


def test_oom_killed() -> None:
    p = pod(phase="Failed", exit_code=137, reason="OOMKilled")
    obs = st.observe(failed_job(), [p])
    assert (obs.phase, obs.reason) == ("Failed", "OOMKilled")
    assert "memory" in obs.message


def test_deadline_exceeded() -> None:
    running = pod(phase="Running", state={"running": {"startedAt": START}})
    obs = st.observe(failed_job("DeadlineExceeded"), [running])
    assert (obs.phase, obs.reason) == ("Failed", "DeadlineExceeded")


def test_suspended_job_is_queued() -> None:
    obs = st.observe(job(suspend=True), [])
    assert (obs.phase, obs.reason) == ("Queued", "QueuedInKueue")
    status = st.job_status({}, 1, "run1-trainer", obs, at=AT)
    assert condition(status, "Queued")["status"] == "True"
    validated(status)


def test_running_pod_is_running() -> None:
    running = pod(phase="Running", state={"running": {"startedAt": START}})
    obs = st.observe(job(), [running])
    assert (obs.phase, obs.reason) == ("Running", "TrainerRunning")
    status = st.job_status({}, 1, "run1-trainer", obs, at=AT)
    assert condition(status, "Running")["status"] == "True"
    assert status["startTime"] == START and "completionTime" not in status
    validated(status)


def test_pending_pod_waits_and_asks_to_be_rechecked_when_it_would_be_stuck() -> None:
    pending = pod(phase="Pending", state={"waiting": {"reason": "ContainerCreating"}})
    obs = st.observe(job(), [pending], at=T0 + timedelta(seconds=100), start_timeout=600)
    assert (obs.phase, obs.reason) == ("Pending", "WaitingForPod")
    assert obs.recheck_in == 500


@pytest.mark.parametrize(
    ("waiting", "reason"),
    [
        ({"reason": "ErrImagePull", "message": "not found"}, "ImagePullBackOff"),
        ({"reason": "ImagePullBackOff"}, "ImagePullBackOff"),
        (
            {"reason": "CreateContainerConfigError", "message": 'secret "k" not found'},
            "SecretNotFound",
        ),
    ],
)
def test_stuck_pods_are_pending_with_a_reason(waiting: Manifest, reason: str) -> None:
    stuck = pod(phase="Pending", state={"waiting": waiting})
    obs = st.observe(job(), [stuck])
    assert (obs.phase, obs.reason) == ("Pending", reason)
    assert obs.message


def test_unschedulable() -> None:
    cond = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    }
    p = pod(phase="Pending", state={"waiting": {"reason": "Pending"}}, conditions=[cond])
    obs = st.observe(job(), [p])
    assert (obs.phase, obs.reason) == ("Pending", "Unschedulable")
    assert "nvidia.com/gpu" in obs.message


def test_newest_terminated_summary_wins() -> None:
    failed = TrainerSummary.failure("run1", "TrainerError", "transient")
    old = pod("a", phase="Failed", message=failed.to_message(), finished="2025-03-01T10:30:00Z")
    new = pod("b", message=summary().to_message(), finished=DONE)
    for pods in ([old, new], [new, old]):
        obs = st.observe(completed_job(), pods)
        assert (obs.phase, obs.reason) == ("Succeeded", "TrainingComplete")


# --------------------------------------------------------------- status sections


def test_summary_fields_carry_the_privacy_block_and_nothing_private() -> None:
    fields = st._summary_fields(summary())
    assert fields["privacy"] == {
        "dpEnabled": True,
        "epsilonSpent": 3.5,
        "targetEpsilon": 4.0,
        "delta": 1e-5,
        "noiseMultiplier": 1.1,
        "accountant": "prv",
        "unit": "record",
        "groupEpsilon": {"2": 7.4, "5": 21.0, "10": 52.5},
        "ledger": [
            {"statistic": "adapter", "mechanism": "DP-SGD", "epsilon": 3.5},
            {"statistic": "steps, totalSteps, epochs, seconds", "mechanism": "public"},
            {"statistic": "audit (canaries only)", "mechanism": "post-processing"},
        ],
    }
    assert fields["audit"] == {
        "verdict": "passed",
        "canaryExposure": 1.3,
        "epsilonLowerBound": 0.2,
        "reasons": [],
    }
    assert fields["output"] == {"path": PATH, "sha256": SHA}
    assert fields["progress"] == {"step": 120, "totalSteps": 120, "percent": 100, "epoch": 2.0}
    assert not keys(fields) & FORBIDDEN_KEYS
    # What the trainer keeps to itself (or reports only in its own summary) stays there.
    assert "records" not in fields and "seconds" not in fields


def test_summary_fields_without_a_summary_are_empty() -> None:
    assert st._summary_fields(None) == {}


def test_partial_progress() -> None:
    fields = st._summary_fields(summary(steps=30, total_steps=120))
    assert fields["progress"] == {"step": 30, "totalSteps": 120, "percent": 25, "epoch": 2.0}


def test_without_dp_there_is_no_epsilon() -> None:
    fields = st._summary_fields(summary(dp_enabled=False, epsilon=None))
    privacy = fields["privacy"]
    assert privacy["dpEnabled"] is False
    assert "epsilonSpent" not in privacy and "targetEpsilon" not in privacy
    # DP claimed but epsilon unknown (infinite): not reported as private.
    assert st._summary_fields(summary(epsilon=None))["privacy"]["dpEnabled"] is False


def test_job_status_of_a_success_validates_and_is_complete() -> None:
    obs = st.observe(completed_job(), [pod(message=summary().to_message())])
    status = st.job_status({}, 3, "run1-trainer", obs, at=AT)
    model = validated(status)
    assert model.phase == "Succeeded"
    assert model.observed_generation == 3 and model.job_name == "run1-trainer"
    assert model.privacy is not None and model.privacy.epsilon_spent == 3.5
    assert model.privacy.target_epsilon == 4.0 and model.privacy.accountant == "prv"
    assert model.privacy.ledger == LEDGER
    assert model.audit is not None and model.audit.epsilon_lower_bound == 0.2
    assert model.output is not None and (model.output.path, model.output.sha256) == (PATH, SHA)
    assert (model.start_time, model.completion_time) == (START, DONE)
    assert not keys(status) & FORBIDDEN_KEYS
    assert "loss" not in status["progress"]
    for ctype, value in (("Succeeded", "True"), ("Failed", "False"), ("AuditPassed", "True")):
        assert condition(status, ctype)["status"] == value, ctype
    # Recomputing from the same children writes nothing.
    again = st.job_status(status, 3, "run1-trainer", obs, at="2025-03-02T00:00:00Z")
    assert not differs(status, again)


def test_finished_job_keeps_its_phase_when_the_trainer_pod_is_gone() -> None:
    """Helper-found regression: pod deleted after success -> Failed/NoSummary."""
    from sealtune_operator.finetunejob.status import Observation, job_status, observe

    complete = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    done = job_status(
        {"phase": "Succeeded", "conditions": []},
        1,
        "j-trainer",
        Observation("Succeeded", "TrainingComplete", "ok"),
    )
    obs = observe(complete, [])
    assert obs.reason == "CollectingSummary"
    assert job_status(done, 1, "j-trainer", obs) == done
    # a job that has not finished yet waits instead of failing
    assert job_status({}, 1, "j-trainer", obs)["phase"] == "Running"


# ------------------------------------------------- status that never misleads (issue 9)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def running(name: str = "a", created: str = START) -> Manifest:
    return pod(name, phase="Running", created=created, state={"running": {"startedAt": created}})


def waiting(name: str = "a", created: str = START, **why: str) -> Manifest:
    reason = {"reason": "ContainerCreating", **why}
    return pod(name, phase="Pending", created=created, state={"waiting": reason})


def oom(name: str = "a", created: str = START) -> Manifest:
    return pod(name, phase="Failed", created=created, exit_code=137, reason="OOMKilled")


def created() -> Manifest:
    """The status the handler writes when it has created the children."""
    edit = st.RULES.edit({}, 1, AT).set("NetworkIsolated", True, "EgressDenied", "egress denied")
    setup = edit.set("ResourcesReady", True, "Created", "created").status
    return st.job_status(setup, 1, "run1-trainer", st.observe(job(), []), at=AT)


class History:
    """Observations fed through `job_status` and `transitions` as the handler feeds them."""

    def __init__(self) -> None:
        self.status = created()
        self.phases: list[str] = []
        self.events: list[Event] = []

    def see(self, job: Manifest, pods: list[Manifest], minutes: float = 1.0) -> Manifest:
        obs = st.observe(job, pods, at=at(minutes), start_timeout=600)
        new = st.job_status(self.status, 1, "run1-trainer", obs, at=AT)
        events = st.transitions(self.status, new)
        for event in events:
            # Every Event says what the condition it reports says, never another state.
            if not event.reason.startswith("Phase"):
                assert any(
                    (c["reason"], c["message"]) == (event.reason, event.message)
                    for c in new["conditions"]
                ), event
        ready = condition(new, "Ready")
        assert (ready["status"] == "True") == (new["phase"] == "Succeeded"), ready
        self.events += events
        self.status = {**self.status, **new}
        self.phases.append(new["phase"])
        validated(self.status)
        return new

    def reasons(self) -> list[tuple[str, str]]:
        return [(e.type, e.reason) for e in self.events]


def test_running_never_goes_back_to_pending_between_pod_exit_and_job_completion() -> None:
    """Review F11: Running -> Pending -> Succeeded, with a `PhasePending` Event."""
    h = History()
    h.see(job(active=1), [waiting()])
    h.see(job(active=1), [running()])
    exited = h.see(job(active=1), [pod(message=summary().to_message())])
    assert (exited["phase"], condition(exited, "Ready")["reason"]) == ("Running", "TrainerExited")
    h.see(completed_job(), [pod(message=summary().to_message())])
    assert h.phases == ["Pending", "Running", "Running", "Succeeded"]
    assert h.reasons() == [
        ("Normal", "TrainerRunning"),
        ("Normal", "AuditPassed"),
        ("Normal", "TrainingComplete"),
    ]


def test_a_job_that_ran_is_never_pending_again_even_on_an_odd_observation() -> None:
    status = st.job_status({}, 1, "run1-trainer", st.observe(job(), [running()]), at=AT)
    again = st.observe(job(), [waiting("b", "2025-03-01T10:30:00Z")], at=at(31))
    assert again.phase == "Pending"  # (a pod the Job replaced, say) but the status keeps Running
    assert st.job_status(status, 1, "run1-trainer", again, at=AT)["phase"] == "Running"


def test_a_finished_job_keeps_its_verdict() -> None:
    done = st.job_status(
        {}, 1, "run1-trainer", st.observe(completed_job(), [pod(message=summary().to_message())])
    )
    for late in (st.observe(job(active=1), [running()]), st.observe(completed_job(), [])):
        assert st.job_status(done, 1, "run1-trainer", late) == done


def test_oom_retries_count_attempts_instead_of_flapping() -> None:
    """Review F11: OOM retries flapped Running/Pending three times with no attempt count."""
    later = "2025-03-01T10:20:00Z"
    h = History()
    h.see(job(active=1, backoff_limit=1), [running()])
    h.see(job(failed=1, backoff_limit=1), [oom()])
    retry = h.see(job(active=1, failed=1, backoff_limit=1), [oom(), waiting("b", later)], 21)
    h.see(job(active=1, failed=1, backoff_limit=1), [oom(), running("b", later)], 22)
    failed = h.see(
        job(("Failed", "BackoffLimitExceeded"), failed=2, backoff_limit=1), [oom(), oom("b", later)]
    )
    assert h.phases == ["Running", "Running", "Running", "Running", "Failed"]
    assert retry["attempts"] == 2 and failed["attempts"] == 2
    assert h.reasons() == [
        ("Normal", "TrainerRunning"),
        ("Warning", "Retrying"),
        ("Normal", "TrainerRunning"),
        ("Warning", "OOMKilled"),
    ]
    retrying, rerun, verdict = h.events[1:]
    assert "OOMKilled, exit code 137" in retrying.message
    assert "attempt 2 of 2" in retrying.message and "attempt 2 of 2" in rerun.message
    assert verdict.message.endswith("(after 2 attempts)")
    assert "memory" in verdict.message


def test_audit_failed_event_carries_the_audit_message() -> None:
    """Review F10: `Warning AuditFailed 'waiting for the trainer pod to start'`."""
    reasons = ["mean canary exposure 9.6 bits > 8.0"]
    audit = SummaryAudit(verdict="failed", canary_exposure=9.6, reasons=reasons)
    message = summary(audit=audit).to_message()
    h = History()
    h.see(job(active=1), [running()])
    h.see(job(active=1), [pod(message=message)])  # the pod exited; the Job has no verdict yet
    h.see(completed_job(), [pod(message=message)])
    assert h.phases == ["Running", "Running", "Failed"]
    assert h.reasons() == [("Normal", "TrainerRunning"), ("Warning", "AuditFailed")]
    assert h.events[-1].message == "memorization audit failed: " + reasons[0]
    assert condition(h.status, "AuditPassed")["message"] == h.events[-1].message


@pytest.mark.parametrize(
    ("stuck", "reason"),
    [
        (waiting(reason="ImagePullBackOff", message="Back-off pulling image"), "ImagePullBackOff"),
        (waiting(reason="ErrImagePull"), "ImagePullBackOff"),
        (
            waiting(reason="CreateContainerConfigError", message='secret "k" not found'),
            "SecretNotFound",
        ),
        (
            pod(
                phase="Pending",
                state={"waiting": {"reason": "Pending"}},
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ],
            ),
            "Unschedulable",
        ),
    ],
)
def test_stuck_pods_post_warning_events(stuck: Manifest, reason: str) -> None:
    """Review F8: stuck states produced no Event; `Running=False` was "not news"."""
    h = History()
    h.see(job(active=1), [waiting()])
    status = h.see(job(active=1), [stuck])
    assert h.reasons() == [("Warning", reason)]
    assert (status["phase"], condition(status, "Ready")["reason"]) == ("Pending", reason)


def test_a_pod_waiting_longer_than_the_start_timeout_is_stuck() -> None:
    """Review F8: a missing Secret volume keeps a pod `ContainerCreating` forever, shown as
    the "usually transient" `WaitingForPod`."""
    h = History()
    first = st.observe(job(active=1), [waiting()], at=at(4), start_timeout=600)
    assert first.reason == "WaitingForPod" and first.recheck_in == 360
    h.see(job(active=1), [waiting()], minutes=4)
    stuck = h.see(job(active=1), [waiting()], minutes=11)
    assert h.reasons() == [("Warning", "PodStuck")]
    message = condition(stuck, "Ready")["message"]
    assert "waited 11m" in message and "ContainerCreating" in message
    assert "kubectl -n team describe pod -l job-name=run1-trainer" in message
    assert st.observe(job(active=1), [waiting()], at=at(11), start_timeout=600).recheck_in is None


def test_ready_condition_explains_every_phase_for_the_printer_columns() -> None:
    cases = [
        (job(suspend=True), [], "Queued", "QueuedInKueue"),
        (job(active=1), [waiting()], "Pending", "WaitingForPod"),
        (job(active=1), [running()], "Running", "TrainerRunning"),
        (completed_job(), [pod(message=summary().to_message())], "Succeeded", "TrainingComplete"),
        (failed_job("DeadlineExceeded"), [running()], "Failed", "DeadlineExceeded"),
    ]
    for j, pods, phase, reason in cases:
        obs = st.observe(j, pods, at=at(1))
        status = st.job_status({}, 1, "run1-trainer", obs, at=AT)
        ready = condition(status, "Ready")
        assert (status["phase"], ready["reason"], ready["message"]) == (phase, reason, obs.message)
        assert status["conditions"][-1] is ready or status["conditions"][-1] == ready


def test_creating_a_job_posts_two_events_and_a_blocked_one_says_why() -> None:
    """The write budget (<= 9 per job) has room for exactly two Events on creation."""
    assert [e.reason for e in st.transitions({}, created())] == ["EgressDenied", "Created"]
    why = ("DatasetNotFound", "dataset PVC 'x' does not exist")
    blocked = st.RULES.edit({}, 1, AT).set("ResourcesReady", False, *why, explain=True).status
    assert st.transitions({}, blocked) == [
        Event("Warning", "DatasetNotFound", "dataset PVC 'x' does not exist")
    ]
    ready = condition(blocked, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "DatasetNotFound")
    edit = st.RULES.edit({}, 1, AT)
    refused = edit.set(
        "NetworkIsolated", False, "NetworkPolicyForbidden", "no", explain=True
    ).status
    assert condition(refused, "Ready")["reason"] == "NetworkPolicyForbidden"
    assert refused["phase"] == "Pending"
