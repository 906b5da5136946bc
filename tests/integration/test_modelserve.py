"""ModelServe end to end: real kube-apiserver (schema, CEL, Pod Security admission, RBAC),
controller-manager, scheduler, KWOK nodes, and the real operator process under the Helm
chart's ServiceAccount."""

from __future__ import annotations

import copy
import json
from functools import partial
from typing import Any

import pytest
import tests.integration.conftest as kit
import yaml
from tests.integration.conftest import Namespace, OperatorProcess, condition, wait_for

from sealtune_api.summary import TrainerSummary
from sealtune_devkit.cluster import REPO, LocalCluster

pytestmark = pytest.mark.integration

SHA_1 = "d" * 64
SHA_2 = "e" * 64


def ms_manifest(name: str, **overrides: Any) -> dict[str, Any]:
    """The example ModelServe, renamed, with spec keys replaced (None deletes a key)."""
    doc = yaml.safe_load((REPO / "examples" / "modelserve.yaml").read_text())
    doc["metadata"] = {"name": name}
    for key, value in overrides.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return dict(doc)


PVC_ADAPTER = {
    "pvc": {"claimName": "adapters", "path": "clinical-notes-lora"},
    "keySecret": {"name": "adapter-output-key"},
}


def prerequisites(ns: Namespace) -> None:
    for claim in ("base-models", "adapters"):
        if ns.get_or_none("pvc", claim) is None:
            ns.bound_pvc(claim)


def run_job(
    ns: Namespace, name: str, message: TrainerSummary | None, outcome: str = "Succeeded"
) -> None:
    for claim in ("base-models", "clinical-data", "adapters"):
        if ns.get_or_none("pvc", claim) is None:
            ns.bound_pvc(claim)
    ns.pv_for(f"{name}-checkpoints")
    annotations = {"sealtune.test/outcome": outcome}
    if outcome == "Failed":
        annotations["sealtune.test/exit-code"] = "1"
    if message is not None:
        annotations["sealtune.test/message"] = message.to_message()
    ns.apply(kit.ftj_manifest(name, podAnnotations=annotations, backoffLimit=0))


def status(ns: Namespace, name: str) -> dict[str, Any]:
    return kit.status_of(ns, "modelserve", name)


def adapter(ns: Namespace, name: str, reason: str) -> dict[str, Any] | None:
    """The status once `AdapterReady` has that reason."""
    st = status(ns, name)
    return st if condition(st, "AdapterReady").get("reason") == reason else None


def phase_is(ns: Namespace, name: str, phase: str, ready: int | None = None) -> Any:
    st = status(ns, name)
    if st.get("phase") != phase or (ready is not None and st.get("readyReplicas") != ready):
        return None
    return st


def event_reasons(ns: Namespace, name: str) -> dict[str, str]:
    return {e["reason"]: e["type"] for e in kit.events_of(ns, "ModelServe", name)}


CHILDREN = {
    "networkpolicy": "{}-isolation",
    "configmap": "{}-serve-config",
    "serviceaccount": "{}-server",
    "deployment": "{}-server",
    "service": "{}",
    "poddisruptionbudget": "{}-server",
}


def test_children_isolation_admission_status_and_cleanup(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns, name = namespace, "notes"
    prerequisites(ns)
    manifest = ms_manifest(name, adapter=PVC_ADAPTER)
    applied = ns.apply(manifest)
    assert applied
    st = wait_for(lambda: phase_is(ns, name, "Ready", 2), timeout=60, what="Ready 2/2")
    objs = {kind: ns.get(kind, tmpl.format(name)) for kind, tmpl in CHILDREN.items()}
    ms = ns.get("modelserve", name)
    for kind, obj in objs.items():
        assert obj["metadata"]["ownerReferences"][0]["uid"] == ms["metadata"]["uid"], kind
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "sealtune-operator"
    # Invariant 1: the NetworkPolicy was written first (these children are never updated
    # after creation, so their resourceVersions are creation order), before any pod.
    rv = {k: int(o["metadata"]["resourceVersion"]) for k, o in objs.items()}
    assert rv["networkpolicy"] < rv["configmap"] < rv["serviceaccount"] < rv["service"]
    # The NetworkPolicy admits exactly spec.access, on 8443, and denies all egress.
    np = objs["networkpolicy"]["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"] and not np.get("egress")
    assert np["podSelector"] == {"matchLabels": {"sealtune.io/modelserve": name}}
    [rule] = np["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "analytics"}}},
        {"podSelector": {"matchLabels": {"app": "discharge-summaries"}}},
        {"ipBlock": {"cidr": "10.20.0.0/16"}},
    ]
    # The policy selects the serving pods, and the pods were admitted as `restricted`.
    pods = ns.get("pods", "-l", "sealtune.io/modelserve=" + name)["items"]
    assert len(pods) == 2
    first_pod = min(int(p["metadata"]["resourceVersion"]) for p in pods)
    managed = json.loads(
        ns.kubectl(
            "get", "deployment", f"{name}-server", "-o", "json", "--show-managed-fields"
        ).stdout
    )["metadata"]["managedFields"]
    assert any(m["manager"] == "sealtune-operator" and m["operation"] == "Apply" for m in managed)
    assert rv["networkpolicy"] < first_pod
    for pod in pods:
        assert pod["metadata"]["labels"]["sealtune.io/modelserve"] == name
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] == f"{name}-server"
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert all(mounts[v]["readOnly"] for v in ("tls", "api-keys", "adapter-key", "adapter"))
        secrets = [v["secret"] for v in spec["volumes"] if "secret" in v]
        assert len(secrets) == 3 and all(s["defaultMode"] == 0o400 for s in secrets)
        probe = spec["containers"][0]["readinessProbe"]["httpGet"]
        assert probe["scheme"] == "HTTPS" and probe["path"] == "/readyz"
    assert objs["serviceaccount"]["automountServiceAccountToken"] is False
    assert objs["service"]["spec"]["ports"][0]["port"] == 8443
    assert objs["poddisruptionbudget"]["spec"]["maxUnavailable"] == 1
    config = json.loads(objs["configmap"]["data"]["serve.json"])
    assert config["modelName"] == "clinical-notes-v1"
    assert config["rateLimit"] == {"requestsPerMinute": 120.0, "burst": 20}
    # Status, conditions, Events, printer columns.
    assert st["endpoint"] == f"{name}.{ns.name}.svc:8443"
    assert st["observedGeneration"] == ms["metadata"]["generation"]
    for ctype, value in (
        ("NetworkIsolated", "True"),
        ("ResourcesReady", "True"),
        ("Available", "True"),
        ("AdapterReady", "True"),
        ("Ready", "True"),
    ):
        assert condition(st, ctype)["status"] == value, (ctype, st)
    reasons = wait_for(
        lambda: (r := event_reasons(ns, name)) and "ReplicasReady" in r and r, what="events"
    )
    assert {"IngressRestricted", "AdapterReady", "Applied"} <= set(reasons), reasons
    # Review F13: a normal first rollout (0/2, 1/2, 2/2) is Pending until Ready, no Warning.
    assert set(reasons.values()) == {"Normal"}, reasons
    assert "PhaseDegraded" not in reasons
    metrics = operator.metrics()
    assert 'sealtune_serves{phase="Ready"}' in metrics
    assert 'sealtune_reconciles_total{kind="ModelServe",result="applied"}' in metrics
    table = ns.kubectl("get", "ms", name).stdout
    assert "ENDPOINT" in table and "Ready" in table and f"{name}.{ns.name}.svc:8443" in table
    assert "REASON" in table and "ReplicasReady" in table and "2/2 serving pods ready" in table
    # Invariant 8: the user's spec and annotations are untouched.
    after = ns.get("modelserve", name)
    annotations = after["metadata"].get("annotations") or {}
    assert set(annotations) <= {"kubectl.kubernetes.io/last-applied-configuration"}
    assert after["spec"]["access"] == manifest["spec"]["access"]

    # A spec change converges the children: access narrowed, one replica, no PDB.
    ns.kubectl(
        "patch",
        "modelserve",
        name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"replicas": 1, "access": {"namespaces": [], "cidrs": []}}}),
    )
    wait_for(
        lambda: ns.get_or_none("poddisruptionbudget", f"{name}-server") is None, what="PDB gone"
    )
    rule = ns.get("networkpolicy", f"{name}-isolation")["spec"]["ingress"][0]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app": "discharge-summaries"}}}]
    wait_for(lambda: phase_is(ns, name, "Ready", 1), what="Ready 1/1")

    # Deletion removes every child.
    ns.kubectl("delete", "modelserve", name, "--wait=false")

    def gone(kind: str, child: str) -> bool:
        return ns.get_or_none(kind, child) is None

    for kind, tmpl in CHILDREN.items():
        wait_for(partial(gone, kind, tmpl.format(name)), timeout=60, what=f"{kind} gone")
    wait_for(
        lambda: not ns.get("pods", "-l", "sealtune.io/modelserve=" + name)["items"],
        what="pods gone",
    )


def test_waits_for_finetunejob_then_rolls_out_each_new_result(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns, name, job = namespace, "waiting", "clinical-notes-lora"
    prerequisites(ns)
    ns.apply(ms_manifest(name, replicas=1))
    st = wait_for(partial(adapter, ns, name, "FineTuneJobNotFound"), what="FineTuneJobNotFound")
    assert st["phase"] == "Pending"
    assert condition(st, "AdapterReady")["status"] == "False"
    assert ns.get_or_none("deployment", f"{name}-server") is None
    assert ns.get_or_none("networkpolicy", f"{name}-isolation") is None

    # The job runs and succeeds: the ModelServe rolls out without being touched.
    run_job(ns, job, kit.trainer_summary(job, sha=SHA_1))
    st = wait_for(lambda: phase_is(ns, name, "Ready", 1), timeout=90, what="Ready after job")
    assert st["adapterSha256"] == SHA_1
    assert condition(st, "AdapterReady")["status"] == "True"
    deploy = ns.get("deployment", f"{name}-server")
    template = deploy["spec"]["template"]
    assert template["metadata"]["annotations"]["sealtune.io/adapter-sha256"] == SHA_1
    vols = {v["name"]: v for v in template["spec"]["volumes"]}
    assert vols["adapter"]["persistentVolumeClaim"] == {"claimName": "adapters", "readOnly": True}
    assert vols["adapter-key"]["secret"]["secretName"] == "adapter-output-key"
    mount = next(
        m for m in template["spec"]["containers"][0]["volumeMounts"] if m["name"] == "adapter"
    )
    assert mount["subPath"] == "clinical-notes-lora"
    # The job's status names the adapter relative to the same PVC the server mounts.
    job_status = ns.get("finetunejob", job)["status"]
    assert job_status["output"] == {"path": "clinical-notes-lora/adapter.tar.enc", "sha256": SHA_1}
    assert job_status["output"]["path"].rsplit("/", 1)[0] == mount["subPath"]
    assert job_status["privacy"]["epsilonSpent"] == 7.91
    assert job_status["audit"]["epsilonLowerBound"] == 0.42
    assert "redactions" not in job_status and "loss" not in job_status.get("progress", {})
    assert {"FineTuneJobNotFound", "AdapterReady", "ReplicasReady"} <= set(event_reasons(ns, name))

    # The job is re-run (deleted and created again) with a newer result: while it is gone
    # the old adapter keeps serving; its new result rolls the Deployment.
    ns.kubectl("delete", "finetunejob", job, "--wait=true", "--timeout=60s")
    st = wait_for(
        partial(adapter, ns, name, "FineTuneJobNotFound"),
        what="no adapter after the job was deleted",
    )
    assert st["phase"] == "Ready"
    assert ns.get("deployment", f"{name}-server")["metadata"]["generation"] == 1
    wait_for(lambda: ns.get_or_none("job", f"{job}-trainer") is None, what="old trainer gone")
    # The old checkpoint PV is Released; a fresh one is reserved for the re-run.
    ns.kubectl("delete", "pv", f"pv-{ns.name}-{job}-checkpoints", "--wait=true", check=False)
    run_job(ns, job, kit.trainer_summary(job, sha=SHA_2))
    st = wait_for(
        lambda: (s := status(ns, name)).get("adapterSha256") == SHA_2 and s,
        timeout=90,
        what="new adapter rolled out",
    )
    deploy = ns.get("deployment", f"{name}-server")
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["sealtune.io/adapter-sha256"] == SHA_2
    assert deploy["metadata"]["generation"] == 2
    wait_for(lambda: phase_is(ns, name, "Ready", 1), timeout=60, what="Ready after rollout")


def test_adapter_not_ready_reasons(namespace: Namespace, operator: OperatorProcess) -> None:
    ns = namespace
    prerequisites(ns)
    cases = {
        "running": ("Running", None, "FineTuneJobRunning", "Pending"),
        "audit": ("Succeeded", kit.trainer_summary("audit", kit.FAILED), "AuditFailed", "Failed"),
        "broken": ("Failed", None, "FineTuneJobFailed", "Failed"),
    }
    for job, (outcome, message, _, _) in cases.items():
        run_job(ns, job, message, outcome=outcome)
        ns.apply(ms_manifest(f"ms-{job}", adapter={"fineTuneJob": {"name": job}}))

    for job, (_, _, reason, phase) in cases.items():
        name = f"ms-{job}"
        st = wait_for(partial(adapter, ns, name, reason), timeout=90, what=f"{name}: {reason}")
        assert condition(st, "AdapterReady")["status"] == "False"
        assert st["phase"] == phase, (name, st)
        assert ns.get_or_none("deployment", f"{name}-server") is None
        if phase == "Failed":
            assert event_reasons(ns, name).get(reason) == "Warning"


VALID = yaml.safe_load((REPO / "examples" / "modelserve.yaml").read_text())["spec"]


def _invalid(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    return spec


INVALID = [
    (
        "both adapter sources",
        _invalid(adapter={"fineTuneJob": {"name": "j"}, **PVC_ADAPTER}),
        "exactly one of fineTuneJob or pvc",
    ),
    ("no adapter source", _invalid(adapter={}), "exactly one of fineTuneJob or pvc"),
    (
        "pvc without key",
        _invalid(adapter={"pvc": {"claimName": "adapters"}}),
        "keySecret is required",
    ),
    (
        "job with key",
        _invalid(adapter={"fineTuneJob": {"name": "j"}, "keySecret": {"name": "k"}}),
        "must not be set with fineTuneJob",
    ),
    ("no TLS secret", _invalid(tlsSecret=None), "tlsSecret: Required value"),
    ("no API-key secret", _invalid(apiKeySecret=None), "apiKeySecret: Required value"),
    ("negative replicas", _invalid(replicas=-1), "spec.replicas"),
    ("zero rate limit", _invalid(rateLimit={"requestsPerMinute": 0}), "requestsPerMinute"),
    ("bad runtime", _invalid(runtime="tgi"), "spec.runtime"),
    ("bad CIDR", _invalid(access={"cidrs": ["10.0.0.0/33"]}), "must be a CIDR"),
    ("bad namespace", _invalid(access={"namespaces": ["Not_A_NS"]}), "valid namespace name"),
    (
        "two model sources",
        _invalid(
            model={
                "pvc": {"claimName": "m"},
                "image": {"reference": "registry.local/m@sha256:" + "a" * 64},
            }
        ),
        "exactly one of pvc or image",
    ),
    (
        "vllm without GPU",
        _invalid(runtime="vllm", resources={"cpu": "4"}),
        "runtime vllm needs resources.gpus >= 1",
    ),
    (
        "prompts without audit",
        _invalid(auditLogging={"enabled": False, "logPrompts": True}),
        "logPrompts needs",
    ),
]


@pytest.mark.parametrize(("case", "spec", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_modelserves_are_rejected(
    namespace: Namespace, case: str, spec: dict[str, Any], message: str
) -> None:
    doc = {"apiVersion": "sealtune.io/v1alpha1", "kind": "ModelServe", "metadata": {"name": "x"}}
    doc["spec"] = spec
    proc = namespace.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False
    )
    assert proc.returncode != 0, case
    assert message in proc.stderr, (case, proc.stderr)


def test_valid_example_is_accepted(namespace: Namespace) -> None:
    proc = namespace.kubectl("apply", "--dry-run=server", "-f", "examples/modelserve.yaml")
    assert "created (server dry run)" in proc.stdout


def test_vllm_runtime_is_admitted_with_adapter_only_in_tmpfs(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns, name = namespace, "fast"
    prerequisites(ns)
    ns.apply(ms_manifest(name, adapter=PVC_ADAPTER, runtime="vllm", replicas=1))
    wait_for(lambda: phase_is(ns, name, "Ready", 1), timeout=60, what="vLLM Ready")
    pod = ns.get("pods", "-l", "sealtune.io/modelserve=" + name)["items"][0]
    spec = pod["spec"]
    [init] = spec["initContainers"]
    vllm, front = spec["containers"]
    assert (init["name"], vllm["name"], front["name"]) == ("decrypt-adapter", "vllm", "front")
    assert init["command"][:3] == ["sealtune", "adapter", "unpack"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["adapter-plain"]["emptyDir"]["medium"] == "Memory"

    # The key is mounted only where the adapter is decrypted.
    def names(c: dict[str, Any]) -> set[str]:
        return {m["name"] for m in c["volumeMounts"]}

    assert "adapter-key" in names(init)
    assert "adapter-key" not in names(vllm) | names(front)
    assert "adapter" not in names(vllm) | names(front)
    # vLLM: LoRA on, loopback only, no container port; the front is the only listener.
    assert "--enable-lora" in vllm["args"]
    assert vllm["args"][vllm["args"].index("--host") + 1] == "127.0.0.1"
    assert "--lora-modules" in vllm["args"] and "clinical-notes-v1=/run/adapter" in vllm["args"]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert not vllm.get("ports")
    assert front["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    assert front["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    config = json.loads(ns.get("configmap", f"{name}-serve-config")["data"]["serve.json"])
    assert config["upstreamUrl"] == "http://127.0.0.1:8000"
    assert config["upstreamModel"] == "clinical-notes-v1"


def test_no_workload_when_the_network_policy_cannot_be_created(
    namespace: Namespace, operator: OperatorProcess, cluster: LocalCluster
) -> None:
    """Invariant 1: with the NetworkPolicy refused by admission nothing else is created and
    the status says why; once the policy is lifted, the retry rolls out (no spec edit)."""
    ns, name = namespace, "isolated"
    prerequisites(ns)
    with kit.network_policies_refused(cluster, ns):
        ns.apply(ms_manifest(name, adapter=PVC_ADAPTER, replicas=1))

        def refused() -> dict[str, Any] | None:
            cond = condition(status(ns, name), "NetworkIsolated")
            return cond if cond.get("status") == "False" else None

        cond = wait_for(refused, what="NetworkIsolated=False")
        assert cond["reason"].startswith("NetworkPolicy"), cond
        assert "network policies frozen" in cond["message"]
        for kind, tmpl in CHILDREN.items():
            assert ns.get_or_none(kind, tmpl.format(name)) is None, kind
        assert not ns.get("pods", "-l", "sealtune.io/modelserve=" + name)["items"]
        assert event_reasons(ns, name).get(cond["reason"]) == "Warning"
        assert condition(status(ns, name), "Ready")["reason"] == cond["reason"]
    wait_for(lambda: phase_is(ns, name, "Ready", 1), timeout=60, what="Ready after retry")
    assert condition(status(ns, name), "NetworkIsolated")["status"] == "True"
