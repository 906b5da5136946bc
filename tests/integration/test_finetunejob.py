"""FineTuneJob end to end: real kube-apiserver, controller-manager, scheduler, KWOK nodes,
and the real operator process running under the Helm chart's ServiceAccount and RBAC."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import yaml
from tests.integration.conftest import (
    FAILED,
    LEDGER,
    OPERATOR_NS,
    OPERATOR_SA,
    Namespace,
    OperatorProcess,
    condition,
    events_of,
    ftj_manifest,
    network_policies_refused,
    status_of,
    trainer_summary,
    wait_for,
)

from sealtune_api.summary import ExitCode, SummaryError, TrainerSummary
from sealtune_devkit.cluster import REPO

pytestmark = pytest.mark.integration

CHILDREN = {
    "networkpolicy": "{}-isolation",
    "secret": "{}-checkpoint-key",
    "persistentvolumeclaim": "{}-checkpoints",
    "configmap": "{}-trainer-config",
    "serviceaccount": "{}-trainer",
    "job": "{}-trainer",
}


def _gone(ns: Namespace, kind: str, name: str) -> bool:
    return ns.get_or_none(kind, name) is None


def status(ns: Namespace, name: str) -> dict[str, Any]:
    return status_of(ns, "finetunejob", name)


def phase_is(ns: Namespace, name: str, phase: str) -> Any:
    st = status(ns, name)
    return st if st.get("phase") == phase else None


def events(ns: Namespace, name: str) -> list[dict[str, Any]]:
    return events_of(ns, "FineTuneJob", name)


EXAMPLE_SUMMARY = trainer_summary("clinical-notes-lora")
SUMMARY = trainer_summary("summary")
FAILED_AUDIT = trainer_summary("audit", FAILED)
WRONG_KEY = TrainerSummary(
    job="wrongkey",
    phase="Failed",
    error=SummaryError(
        reason="DatasetDecryptError",
        message="dataset key does not match /data/notes.enc (key id 1a2b)",
    ),
)


def test_example_creates_hardened_children_network_policy_first(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace
    ns.prerequisites_for_example()
    # The example as written, plus the KWOK stand-in's cue to end with a trainer summary
    # (a trainer that exits 0 without one is a failure: see the `nosummary` case below).
    doc = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())
    doc["spec"]["podAnnotations"] = {
        "sealtune.test/outcome": "Succeeded",
        "sealtune.test/message": EXAMPLE_SUMMARY.to_message(),
    }
    text = yaml.safe_dump(doc)
    applied = json.loads(
        ns.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=text).stdout
    )
    ns.kubectl("apply", "-f", "-", input=text)
    name = "clinical-notes-lora"
    wait_for(lambda: ns.get_or_none("job", f"{name}-trainer"), what="trainer Job")
    objs = {kind: ns.get(kind, tmpl.format(name)) for kind, tmpl in CHILDREN.items()}
    ftj = ns.get("finetunejob", name)
    for kind, obj in objs.items():
        owner = obj["metadata"]["ownerReferences"][0]
        assert owner["uid"] == ftj["metadata"]["uid"], kind
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sealtune-operator"
    # Invariant 1: the isolating NetworkPolicy was written before the Job.
    rv = {k: int(o["metadata"]["resourceVersion"]) for k, o in objs.items()}
    assert rv["networkpolicy"] < rv["secret"] < rv["persistentvolumeclaim"] < rv["job"]
    assert objs["serviceaccount"]["automountServiceAccountToken"] is False
    assert objs["persistentvolumeclaim"]["spec"]["storageClassName"] == "encrypted"
    # The pod was admitted under Pod Security `restricted` and ran to completion.
    st = wait_for(lambda: phase_is(ns, name, "Succeeded"), timeout=90, what="phase Succeeded")
    pods = ns.get("pods", "-l", f"sealtune.io/finetunejob={name}")["items"]
    assert pods, "the Job's pod was not admitted"
    assert st["observedGeneration"] == ftj["metadata"]["generation"]
    for ctype in ("NetworkIsolated", "ResourcesReady", "Succeeded"):
        cond = condition(st, ctype)
        assert cond["status"] == "True", (ctype, cond)
        assert cond["observedGeneration"] == ftj["metadata"]["generation"]
    reasons = {e["reason"] for e in events(ns, name)}
    assert {"EgressDenied", "Created", "TrainingComplete"} <= reasons, reasons
    # Review F11: no way back to Pending between the pod's exit and the Job's completion.
    assert "PhasePending" not in reasons
    # Invariant 8: spec and annotations are exactly what the user applied.
    after = ns.get("finetunejob", name)
    assert after["spec"] == applied["spec"]
    annotations = after["metadata"].get("annotations") or {}
    assert set(annotations) <= {"kubectl.kubernetes.io/last-applied-configuration"}
    assert not after["metadata"].get("finalizers"), "children are owned; no finalizer needed"
    # Printer columns render, with the Ready condition's reason and message (review F8).
    table = ns.kubectl("get", "ftj", name).stdout
    assert "PHASE" in table and "EPSILON" in table and "Succeeded" in table
    assert "REASON" in table and "MESSAGE" in table and "TrainingComplete" in table
    assert "7.91" in table and "the adapter is trained and encrypted" in table
    assert st["output"]["path"] == "clinical-notes-lora/adapter.tar.enc"


def test_restricted_namespace_really_enforces(namespace: Namespace) -> None:
    """Sanity check of the admission the tests rely on: a root pod is refused."""
    proc = namespace.kubectl(
        "run",
        "rooty",
        "--image=busybox",
        "--restart=Never",
        "--overrides",
        json.dumps({"spec": {"securityContext": {"runAsUser": 0}}}),
        check=False,
    )
    assert proc.returncode != 0
    assert "restricted" in proc.stderr


def _run_job(ns: Namespace, name: str, **spec: Any) -> None:
    for claim in ("base-models", "clinical-data", "adapters"):
        if ns.get_or_none("pvc", claim) is None:
            ns.bound_pvc(claim)
    for secret in ("clinical-data-key", "adapter-output-key"):
        if ns.get_or_none("secret", secret) is None:
            ns.key_secret(secret)
    ns.pv_for(f"{name}-checkpoints")
    ns.apply(ftj_manifest(name, **spec))


def test_trainer_summary_reaches_status(namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    _run_job(
        ns,
        "summary",
        podAnnotations={
            "sealtune.test/outcome": "Succeeded",
            "sealtune.test/message": SUMMARY.to_message(),
        },
    )
    st = wait_for(lambda: phase_is(ns, "summary", "Succeeded"), timeout=90, what="Succeeded")
    privacy = st["privacy"]
    assert privacy["dpEnabled"] is True
    assert privacy["epsilonSpent"] == 7.91 and privacy["targetEpsilon"] == 8.0
    assert privacy["delta"] == 1e-5 and privacy["noiseMultiplier"] == 0.83
    assert privacy["accountant"] == "prv" and privacy["unit"] == "record"
    assert privacy["groupEpsilon"] == {"2": 17.9, "5": 52.3}
    assert privacy["ledger"] == [e.wire() for e in LEDGER]
    assert privacy["ledger"][0] == {
        "statistic": "adapter",
        "mechanism": "DP-SGD (Poisson-subsampled Gaussian)",
        "epsilon": 7.91,
    }
    assert st["audit"] == {
        "verdict": "passed",
        "canaryExposure": 1.7,
        "epsilonLowerBound": 0.42,
        "reasons": [],
    }
    # Relative to the output PVC, exactly as the trainer reported it.
    assert st["output"] == {"path": "clinical-notes-lora/adapter.tar.enc", "sha256": "d" * 64}
    assert st["progress"] == {"step": 120, "totalSteps": 120, "percent": 100, "epoch": 2.0}
    # Statistics of the private data that the contract no longer carries (privacy ledger).
    assert "redactions" not in st
    assert "loss" not in st.get("progress", {})
    assert "membershipAuc" not in st["audit"]
    assert condition(st, "AuditPassed")["status"] == "True"
    assert "7.91" in ns.kubectl("get", "ftj", "summary").stdout


@pytest.mark.parametrize(
    ("case", "spec", "reason", "phase"),
    [
        (
            "oom",
            {
                "podAnnotations": {
                    "sealtune.test/outcome": "Failed",
                    "sealtune.test/reason": "OOMKilled",
                    "sealtune.test/exit-code": "137",
                },
                "backoffLimit": 0,
            },
            "OOMKilled",
            "Failed",
        ),
        (
            "wrongkey",
            {
                "podAnnotations": {
                    "sealtune.test/outcome": "Failed",
                    "sealtune.test/exit-code": str(int(ExitCode.KEY)),
                    "sealtune.test/message": WRONG_KEY.to_message(),
                }
            },
            "DatasetDecryptError",
            "Failed",
        ),
        (
            "audit",
            {
                "podAnnotations": {
                    "sealtune.test/outcome": "Succeeded",
                    "sealtune.test/message": FAILED_AUDIT.to_message(),
                }
            },
            "AuditFailed",
            "Failed",
        ),
        # Exit 0 without a summary is not success (the trainer's word is required).
        (
            "nosummary",
            {"podAnnotations": {"sealtune.test/outcome": "Succeeded"}},
            "NoSummary",
            "Failed",
        ),
        (
            "pull",
            {
                "podAnnotations": {
                    "sealtune.test/stuck": "ImagePullBackOff",
                    "sealtune.test/stuck-message": "Back-off pulling image",
                }
            },
            "ImagePullBackOff",
            "Pending",
        ),
        (
            "nosecret",
            {
                "podAnnotations": {
                    "sealtune.test/stuck": "CreateContainerConfigError",
                    "sealtune.test/stuck-message": 'secret "clinical-data-key" not found',
                }
            },
            "SecretNotFound",
            "Pending",
        ),
        ("nogpu", {"resources": {"gpus": 16}}, "Unschedulable", "Pending"),
        # A pod that never starts (e.g. a Secret volume that cannot be mounted) is stuck
        # after the start timeout (conftest: 10 s), not "usually transient" (review F8).
        (
            "mount",
            {"podAnnotations": {"sealtune.test/stuck": "ContainerCreating"}},
            "PodStuck",
            "Pending",
        ),
        (
            "deadline",
            {"podAnnotations": {"sealtune.test/outcome": "Running"}, "activeDeadlineSeconds": 60},
            "DeadlineExceeded",
            "Failed",
        ),
    ],
)
def test_failures_reach_status_with_readable_reasons(
    namespace: Namespace,
    operator: OperatorProcess,
    case: str,
    spec: dict[str, Any],
    reason: str,
    phase: str,
) -> None:
    ns = namespace
    _run_job(ns, case, **spec)

    def reached() -> Any:
        st = status(ns, case)
        conds = [c for c in st.get("conditions") or [] if c.get("reason") == reason]
        return st if st.get("phase") == phase and conds else None

    st = wait_for(reached, timeout=120, what=f"{phase}/{reason}")
    cond = next(c for c in st["conditions"] if c["reason"] == reason)
    assert cond["message"], "every reason comes with a message"
    ready = condition(st, "Ready")
    assert (ready["reason"], ready["message"]) == (reason, cond["message"])
    # Failures and stuck states alike post a Warning, with the condition's own message.
    warnings = wait_for(
        lambda: [e for e in events(ns, case) if (e["type"], e["reason"]) == ("Warning", reason)],
        what=f"Warning {reason}",
    )
    assert {e["message"] for e in warnings} == {ready["message"]}
    if phase == "Failed":
        assert condition(st, "Failed")["status"] == "True"
    if case == "audit":
        assert FAILED_AUDIT.audit is not None
        for why in FAILED_AUDIT.audit.reasons:
            assert why in condition(st, "Failed")["message"]
        assert st["audit"]["verdict"] == "failed"
        assert st["audit"]["epsilonLowerBound"] == 9.2
        assert st["audit"]["reasons"] == FAILED_AUDIT.audit.reasons
        assert condition(st, "AuditPassed")["status"] == "False"
    elif case == "wrongkey":
        assert WRONG_KEY.error is not None
        assert condition(st, "Failed")["message"] == WRONG_KEY.error.message
    elif case == "mount":
        assert "ContainerCreating" in ready["message"] and "describe pod" in ready["message"]
    elif case == "nosummary":
        assert "privacy" not in st and "output" not in st, "nothing to report without a summary"


def test_oom_retries_count_attempts_and_never_go_back_to_pending(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    """Review F11: OOM retries flapped Running/Pending, with no attempt count anywhere."""
    ns = namespace
    oom = {
        "sealtune.test/outcome": "Failed",
        "sealtune.test/reason": "OOMKilled",
        "sealtune.test/exit-code": "137",
    }
    _run_job(ns, "retry", podAnnotations=oom, backoffLimit=1)
    seen: list[str] = []

    def failed() -> Any:
        st = status(ns, "retry")
        if st.get("phase") and (not seen or seen[-1] != st["phase"]):
            seen.append(st["phase"])
        return st if st.get("phase") == "Failed" else None

    st = wait_for(failed, timeout=120, interval=0.1, what="Failed after the retry")
    assert "Pending" not in seen[seen.index("Running") :], seen  # retries wait >= 10 s
    assert st["attempts"] == 2
    assert condition(st, "Failed")["reason"] == "OOMKilled"
    assert condition(st, "Failed")["message"].endswith("(after 2 attempts)")
    got = wait_for(
        lambda: (
            (r := {(e["type"], e["reason"]): e["message"] for e in events(ns, "retry")})
            and ("Warning", "OOMKilled") in r
            and r
        ),
        what="Events",
    )
    assert "attempt 2 of 2" in got[("Warning", "Retrying")]
    assert "OOMKilled, exit code 137" in got[("Warning", "Retrying")]
    assert not any(reason == "PhasePending" for _, reason in got)


def test_missing_dataset_creates_nothing_until_it_appears(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace
    ns.bound_pvc("base-models")
    ns.bound_pvc("adapters")
    ns.key_secret("clinical-data-key")
    ns.key_secret("adapter-output-key")
    ns.pv_for("waiting-checkpoints")
    ns.apply(ftj_manifest("waiting"))
    st = wait_for(
        lambda: (
            condition(status(ns, "waiting"), "ResourcesReady").get("reason") == "DatasetNotFound"
            and status(ns, "waiting")
        ),
        what="DatasetNotFound",
    )
    assert "clinical-data" in condition(st, "ResourcesReady")["message"]
    assert ns.get_or_none("networkpolicy", "waiting-isolation") is None
    assert ns.get_or_none("job", "waiting-trainer") is None
    ns.bound_pvc("clinical-data")  # the referenced object appears: re-checked, no poll needed
    wait_for(lambda: ns.get_or_none("job", "waiting-trainer"), what="Job after PVC appeared")
    assert condition(status(ns, "waiting"), "ResourcesReady")["status"] == "True"


def test_missing_model_and_unencrypted_storage(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace
    ns.apply(ftj_manifest("nomodel"))
    wait_for(
        lambda: condition(status(ns, "nomodel"), "ResourcesReady").get("reason") == "ModelNotFound",
        what="ModelNotFound",
    )
    _run_job(ns, "plainstore", checkpoints={"storageClassName": "plain"})
    st = wait_for(
        lambda: (
            condition(status(ns, "plainstore"), "ResourcesReady").get("reason")
            == "StorageNotEncrypted"
            and status(ns, "plainstore")
        ),
        what="StorageNotEncrypted",
    )
    assert "allowlist" in condition(st, "ResourcesReady")["message"]
    assert ns.get_or_none("networkpolicy", "plainstore-isolation") is None
    # Fixing the spec is re-checked at once.
    ns.kubectl(
        "patch",
        "ftj",
        "plainstore",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"checkpoints": {"storageClassName": "encrypted"}}}),
    )
    wait_for(lambda: ns.get_or_none("job", "plainstore-trainer"), what="Job after fix")


def test_delete_removes_every_child_and_the_key(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace
    _run_job(ns, "gone", podAnnotations={"sealtune.test/outcome": "Running"})
    wait_for(lambda: phase_is(ns, "gone", "Running"), timeout=90, what="Running")
    ns.kubectl("delete", "ftj", "gone", "--timeout=90s")
    for kind, tmpl in CHILDREN.items():
        wait_for(
            functools.partial(_gone, ns, kind, tmpl.format("gone")),
            timeout=60,
            what=f"{kind} deleted",
        )
    assert not ns.get("pods", "-l", "sealtune.io/finetunejob=gone")["items"]


def test_operator_rbac_cannot_read_secrets(cluster: Any) -> None:
    who = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"

    def can(verb: str, resource: str) -> str:
        return str(
            cluster.kubectl(
                "auth", "can-i", verb, resource, "--as", who, "-A", check=False
            ).stdout.strip()
        )

    for verb in ("get", "list", "watch", "update", "patch"):
        assert can(verb, "secrets") == "no", verb
    assert can("create", "secrets") == "yes"
    assert can("delete", "secrets") == "yes"
    assert can("create", "jobs.batch") == "yes"
    assert can("patch", "finetunejobs.sealtune.io/status") == "yes"


def test_no_workload_when_the_network_policy_cannot_be_created(
    namespace: Namespace, operator: OperatorProcess, cluster: Any
) -> None:
    """Invariant 1: an admission policy refuses the NetworkPolicy; nothing else is created,
    the status says why, and the job proceeds once the policy is lifted (retry, no spec edit)."""
    ns = namespace
    with network_policies_refused(cluster, ns):
        _run_job(ns, "isolated")

        def refused() -> Any:
            cond = condition(status(ns, "isolated"), "NetworkIsolated")
            return cond if cond.get("status") == "False" else None

        cond = wait_for(refused, what="NetworkIsolated=False")
        assert cond["reason"].startswith("NetworkPolicy"), cond
        assert "network policies frozen" in cond["message"]
        for kind in ("secret", "persistentvolumeclaim", "configmap", "serviceaccount", "job"):
            assert ns.get_or_none(kind, CHILDREN[kind].format("isolated")) is None, kind
        assert not ns.get("pods", "-l", "sealtune.io/finetunejob=isolated")["items"]
    wait_for(lambda: ns.get_or_none("job", "isolated-trainer"), timeout=60, what="Job after retry")
    assert condition(status(ns, "isolated"), "NetworkIsolated")["status"] == "True"
