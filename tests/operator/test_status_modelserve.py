"""Pure-function tests of the ModelServe status layer: adapter resolution, the Deployment's
state, conditions (positive polarity) and the Events they post (no API server needed)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from tests.operator.test_render_serve import ADAPTER, REPO, owner

from sealtune_api.modelserve import ModelServeStatus
from sealtune_operator.common.conditions import Event, condition
from sealtune_operator.modelserve import status as st

Manifest = dict[str, Any]


def job(phase: str, verdict: str | None = "passed", sha: str | None = "d" * 64) -> Manifest:
    spec = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())["spec"]
    status: Manifest = {"phase": phase}
    if verdict:
        status["audit"] = {"verdict": verdict, "reasons": ["membership AUC 0.9 > 0.6"]}
    if sha:
        status["output"] = {"sha256": sha}
    return {"metadata": {"name": "clinical-notes-lora"}, "spec": spec, "status": status}


def deploy(ready: int, progressing: str | None = None) -> Manifest:
    conds = [{"type": "Progressing", "status": "False", "reason": progressing, "message": "m"}]
    return {"status": {"readyReplicas": ready, "conditions": conds if progressing else []}}


def rolled_out(current: Manifest, generation: int = 1) -> Manifest:
    """What the handler records once every child is applied (before the Deployment's state)."""
    edit = st.RULES.edit(current, generation, "t0")
    for ctype, reason in (
        ("NetworkIsolated", "IngressRestricted"),
        ("AdapterReady", "AdapterReady"),
        ("ResourcesReady", "Applied"),
    ):
        edit.set(ctype, True, reason, reason.lower())
    return st.serve_status(edit.status, generation, 2, None, "t0")


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (None, "FineTuneJobNotFound"),
        (job("Pending", None, None), "FineTuneJobRunning"),
        (job("Running", None, None), "FineTuneJobRunning"),
        (job("Failed", "failed"), "AuditFailed"),
        (job("Failed", None, None), "FineTuneJobFailed"),
        (job("Succeeded", None), "AuditFailed"),
        ({**job("Succeeded"), "metadata": {"deletionTimestamp": "x"}}, "FineTuneJobNotFound"),
    ],
)
def test_adapter_not_ready_reasons(obj: Manifest | None, reason: str) -> None:
    _, spec = owner()
    state = st.resolve_adapter(spec, obj)
    assert state.ref is None and state.reason == reason
    status = st.waiting_status({}, 3, state, at="t0")
    cond = condition(status, "AdapterReady")
    assert cond["status"] == "False" and cond["reason"] == reason
    assert cond["observedGeneration"] == 3
    expected = "Failed" if reason in st.TERMINAL_ADAPTER_REASONS else "Pending"
    assert status["phase"] == expected
    ready = condition(status, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False",
        reason,
        cond["message"],
    )
    ModelServeStatus.model_validate(status)


def test_succeeded_and_audited_job_resolves_to_its_output() -> None:
    _, spec = owner()
    state = st.resolve_adapter(spec, job("Succeeded"))
    assert state.ref == ADAPTER
    _, pvc_spec = owner(
        adapter={"pvc": {"claimName": "vault", "path": "a.tar.enc"}, "keySecret": {"name": "k"}}
    )
    ref = st.resolve_adapter(pvc_spec, None).ref
    assert ref is not None and ref.sha256 is None
    assert (ref.pvc.claim_name, ref.pvc.path) == ("vault", "a.tar.enc")


@pytest.mark.parametrize(
    ("obj", "replicas", "was", "phase", "reason"),
    [
        (None, 2, False, "Pending", "Creating"),
        (deploy(0), 2, False, "Pending", "WaitingForPods"),
        (deploy(1), 2, False, "Pending", "WaitingForPods"),
        (deploy(2), 2, False, "Ready", "ReplicasReady"),
        (deploy(0), 0, False, "Ready", "ReplicasReady"),
        (deploy(1), 2, True, "Degraded", "ReplicasUnavailable"),
        (deploy(0), 2, True, "Degraded", "ReplicasUnavailable"),
        (deploy(0, "ProgressDeadlineExceeded"), 2, False, "Failed", "ProgressDeadlineExceeded"),
        (deploy(1, "ProgressDeadlineExceeded"), 2, False, "Failed", "ProgressDeadlineExceeded"),
        (deploy(1, "ProgressDeadlineExceeded"), 2, True, "Degraded", "ProgressDeadlineExceeded"),
    ],
)
def test_deployment_maps_to_phase(
    obj: Manifest | None, replicas: int, was: bool, phase: str, reason: str
) -> None:
    obs = st.observe_deployment(obj, replicas, was)
    assert (obs.phase, obs.reason) == (phase, reason)


def test_first_rollout_posts_no_warning_and_is_never_degraded() -> None:
    """Review F13: a healthy 2-replica rollout posted `Warning WaitingForPods 0/2`,
    `Warning ReplicasUnavailable 1/2` and `Warning PhaseDegraded`, then `PhaseReady`."""
    _, spec = owner()
    status = st.waiting_status({}, 1, st.resolve_adapter(spec, job("Running", None, None)))
    events: list[Event] = []
    phases = []
    for step in (rolled_out(status), *(deploy(n) for n in (0, 1, 2))):
        new = step if "conditions" in step else st.serve_status(status, 1, 2, step, "t1")
        events += st.transitions(status, new)
        status = {**status, **new}
        phases.append(status["phase"])
    assert phases == ["Pending", "Pending", "Pending", "Ready"]
    assert all(e.type == "Normal" for e in events), events
    assert [e.reason for e in events] == [
        "IngressRestricted",
        "AdapterReady",
        "Applied",
        "ReplicasReady",
    ]
    # Once available, losing a pod is Degraded, with a Warning; and it stays Degraded.
    degraded = st.serve_status(status, 1, 2, deploy(1), "t2")
    assert degraded["phase"] == "Degraded"
    assert st.transitions(status, degraded) == [
        Event("Warning", "ReplicasUnavailable", "1/2 serving pods ready")
    ]
    assert st.serve_status(degraded, 1, 2, deploy(0), "t3")["phase"] == "Degraded"
    assert st.serve_status(degraded, 1, 2, deploy(2), "t3")["phase"] == "Ready"


def test_adapter_ready_is_positive_and_replaces_the_old_double_negative() -> None:
    """Review F14: `AdapterNotReady=False reason AdapterReady` was a double negative."""
    _, spec = owner()
    old = {
        "phase": "Ready",
        "conditions": [
            {
                "type": "AdapterNotReady",
                "status": "False",
                "reason": "AdapterReady",
                "message": "m",
                "observedGeneration": 1,
                "lastTransitionTime": "t0",
            }
        ],
    }
    ready = st.RULES.edit(old, 1).set("AdapterReady", True, "AdapterReady", "resolved").status
    assert [c["type"] for c in ready["conditions"]] == ["AdapterReady"]
    assert condition(ready, "AdapterReady")["status"] == "True"
    missing = st.waiting_status({}, 1, st.resolve_adapter(spec, None))
    assert condition(missing, "AdapterReady")["status"] == "False"


def test_status_transitions_post_one_event_each_and_warn_on_trouble() -> None:
    _, spec = owner()
    waiting = st.waiting_status({}, 1, st.resolve_adapter(spec, None), at="t0")
    assert st.transitions({}, waiting) == [
        Event(
            "Normal",
            "FineTuneJobNotFound",
            "FineTuneJob 'clinical-notes-lora' does not exist (yet)",
        )
    ]
    failed = st.waiting_status(waiting, 1, st.resolve_adapter(spec, job("Failed", "failed")))
    events = st.transitions(waiting, failed)
    assert [(e.type, e.reason) for e in events] == [("Warning", "AuditFailed")]
    assert "failed its memorization audit" in events[0].message
    assert st.transitions(failed, failed) == []
    ready = st.serve_status(
        st.RULES.edit(failed, 1).set("AdapterReady", True, "AdapterReady", "ok").status,
        1,
        2,
        deploy(2),
    )
    assert ready["phase"] == "Ready" and ready["readyReplicas"] == 2
    reasons = {e.reason: e.type for e in st.transitions(failed, ready)}
    assert reasons == {"AdapterReady": "Normal", "ReplicasReady": "Normal"}
    # Condition lastTransitionTime only moves when the status flips.
    again = st.serve_status(ready, 1, 2, deploy(2), at="later")
    assert condition(again, "Available") == condition(ready, "Available")


def test_a_refused_network_policy_explains_a_pending_serve_but_not_a_serving_one() -> None:
    why = ("NetworkPolicyForbidden", "no")
    refused = st.RULES.edit({}, 1).set("NetworkIsolated", False, *why, explain=True).status
    assert condition(refused, "Ready")["reason"] == "NetworkPolicyForbidden"
    assert st.transitions({}, refused) == [Event("Warning", "NetworkPolicyForbidden", "no")]
    serving = {**refused, "phase": "Ready", "conditions": []}
    kept = st.RULES.edit(serving, 1).set("NetworkIsolated", False, *why, explain=True).status
    assert kept["phase"] == "Ready" and not condition(kept, "Ready")
