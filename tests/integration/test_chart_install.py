"""The Helm chart against a real control plane: server-side validation, a real
`helm install`, the operator running as the chart's ServiceAccount, RBAC checked with
`kubectl auth can-i`, the admission policy refusing a user's edit, GitOps drift, then
`helm upgrade` and `helm uninstall` keeping the CRDs and CRs.

The chart installs cluster-wide objects with fixed names (ClusterRole, the
ClusterKopfPeering, the ValidatingAdmissionPolicy that only lets ONE ServiceAccount edit
managed objects), so it gets a control plane of its own (the same LocalCluster as the
session `cluster` fixture): installing it into the shared one would rebind the other
tests' operator RBAC and put their operator under this release's policy.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
import yaml
from tests.integration.conftest import (
    OPERATOR_NS,
    OPERATOR_SA,
    STORAGE_CLASS,
    Namespace,
    OperatorProcess,
    ftj_manifest,
    helm,
    install_crds,
    storage_classes,
    wait_for,
)

from sealtune_devkit.cluster import REPO, LocalCluster

pytestmark = pytest.mark.integration

CHART = REPO / "charts" / "sealtune"
VALUES = REPO / "tests" / "chart" / "values"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"

# `kubectl auth can-i` as the chart's ServiceAccount: what it needs (sufficient) ...
OPERATOR_MAY = [
    ("watch", "finetunejobs.sealtune.io"),
    ("patch", "finetunejobs.sealtune.io"),
    ("update", "finetunejobs.sealtune.io/status"),
    ("update", "finetunejobs.sealtune.io/finalizers"),
    ("create", "networkpolicies.networking.k8s.io"),
    ("create", "secrets"),
    ("delete", "secrets"),
    ("create", "jobs.batch"),
    ("create", "persistentvolumeclaims"),
    ("list", "pods"),
    ("create", "events"),
    ("create", "events.events.k8s.io"),
    ("patch", "clusterkopfpeerings.kopf.dev"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
]
# ... and what it must never have (minimal).
OPERATOR_MAY_NOT = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("update", "secrets"),
    ("patch", "secrets"),
    ("create", "pods"),
    ("create", "pods/exec"),
    ("delete", "pods"),
    ("update", "persistentvolumeclaims"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("get", "nodes"),
    ("create", "namespaces"),
    ("delete", "finetunejobs.sealtune.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "validatingadmissionpolicies.admissionregistration.k8s.io"),
]


@pytest.fixture(scope="module")
def chart_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster.boot(tmp_path_factory.mktemp("chart-cluster"))
    try:
        c.apply(storage_classes())
        yield c
    finally:
        c.stop()


def run_helm(c: LocalCluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm(), "--kubeconfig", str(c.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        state = c.kubectl("get", "all,events", "-n", OPERATOR_NS, "-o", "wide", check=False)
        raise AssertionError(
            f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}\n{state.stdout}{state.stderr}"
        )
    return proc


def template(*args: str) -> str:
    return subprocess.run(
        [helm(), "template", "sealtune", str(CHART), "-n", OPERATOR_NS, *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_rendered_chart_passes_server_side_dry_run(chart_cluster: LocalCluster) -> None:
    c = chart_cluster
    # Dry-run cannot register CRDs, and the peering objects need them: apply CRDs first.
    install_crds(c, CHART / "crds", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
    for ns in (OPERATOR_NS, "ml-fraud", "ml-claims"):
        c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for values in ("default", "internal-registry", "namespace-scoped"):
        extra = [] if values == "default" else ["-f", str(VALUES / f"{values}.yaml")]
        out = c.kubectl(
            "apply", "--dry-run=server", "-f", "-", input=template(*extra, "--include-crds")
        ).stdout
        assert (
            "validatingadmissionpolicy.admissionregistration.k8s.io/sealtune-managed-"
            "objects created (server dry run)" in out
        ), out
        assert "deployment.apps/sealtune-operator created (server dry run)" in out
    # The operator's pod template meets Pod Security "restricted" (warn mode checks
    # workload templates; a violation would print a warning).
    c.kubectl("label", "namespace", OPERATOR_NS, "--overwrite", *RESTRICTED_LABELS)
    proc = c.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=template("--show-only", "templates/deployment.yaml"),
    )
    assert "Warning" not in proc.stderr, proc.stderr
    c.kubectl("delete", "namespace", "ml-fraud", "ml-claims", "--wait=false")


def can_i(c: LocalCluster, verb: str, resource: str, ns: str = "team-a") -> bool:
    proc = c.kubectl("auth", "can-i", verb, resource, "-n", ns, "--as", OPERATOR_USER, check=False)
    return proc.stdout.strip() == "yes"


def test_namespace_scoped_rbac_reaches_only_watched_namespaces(chart_cluster: LocalCluster) -> None:
    """watchNamespaces: full rights in the watched namespaces, none elsewhere."""
    c = chart_cluster
    for ns in (OPERATOR_NS, "watched-a", "watched-b", "unwatched"):
        c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    rbac = template(
        "--set",
        "watchNamespaces={watched-a,watched-b}",
        "--show-only",
        "templates/rbac.yaml",
        "--show-only",
        "templates/serviceaccount.yaml",
    )
    c.kubectl("apply", "-f", "-", input=rbac)
    try:
        for ns in ("watched-a", "watched-b"):
            for verb, res in OPERATOR_MAY:
                assert can_i(c, verb, res, ns), f"cannot {verb} {res} in {ns}"
            for verb, res in OPERATOR_MAY_NOT:
                assert not can_i(c, verb, res, ns), f"may {verb} {res} in {ns}"
        for verb, res in [
            ("watch", "finetunejobs.sealtune.io"),
            ("create", "networkpolicies.networking.k8s.io"),
            ("create", "secrets"),
            ("create", "jobs.batch"),
            ("patch", "kopfpeerings.kopf.dev"),
        ]:
            assert not can_i(c, verb, res, "unwatched"), f"may {verb} {res} in unwatched"
        # The small ClusterRole: only what has no namespace.
        assert can_i(c, "list", "customresourcedefinitions.apiextensions.k8s.io", "")
        assert can_i(c, "watch", "namespaces", "")
        assert not can_i(c, "list", "finetunejobs.sealtune.io", "unwatched")
    finally:
        c.kubectl("delete", "-f", "-", "--wait=true", input=rbac)
        c.kubectl("delete", "namespace", "watched-a", "watched-b", "unwatched", "--wait=false")


RESTRICTED_LABELS = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/warn=restricted",
)
APISERVER_IP = "192.0.2.10"  # TEST-NET-1: EndpointSlices may not hold loopback addresses


def publish_apiserver_endpoint(c: LocalCluster) -> int:
    """What every real cluster has and this loopback-only one lacks: the kube-apiserver's
    EndpointSlice (an apiserver bound to 127.0.0.1 publishes none). No CNI enforces
    NetworkPolicies here; this checks the chart reads the endpoint the cluster publishes."""
    port = int(c.server.rsplit(":", 1)[1])
    c.apply(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [APISERVER_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }
    )
    return port


def wait_ready_replicas(c: LocalCluster, n: int) -> None:
    """The operator Deployment rolled out with n ready pods (KWOK runs them). Polled here
    rather than with `helm --wait`, whose watcher once missed the update on a loaded
    machine; a timeout shows the pods and the KWOK log instead."""

    def ready() -> bool:
        d = c.get_json("deployment", "sealtune-operator", "-n", OPERATOR_NS)
        st = d.get("status", {})
        return bool(
            d["spec"]["replicas"] == n
            and st.get("observedGeneration") == d["metadata"]["generation"]
            and st.get("updatedReplicas") == n
            and st.get("readyReplicas") == n
            and st.get("replicas") == n
        )

    try:
        wait_for(ready, timeout=240, what=f"{n} ready operator replicas")
    except AssertionError as exc:
        pods = c.kubectl("get", "pods,events", "-n", OPERATOR_NS, "-o", "wide", check=False)
        kwok = (c.logs / "kwok.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}\n{pods.stdout}{pods.stderr}\nkwok.log tail:\n{kwok}") from exc


def test_install_operate_upgrade_uninstall(chart_cluster: LocalCluster) -> None:
    c = chart_cluster
    api_port = publish_apiserver_endpoint(c)
    # The operator's own namespace enforces Pod Security "restricted": its pods must pass.
    c.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}})
    c.kubectl("label", "namespace", OPERATOR_NS, "--overwrite", *RESTRICTED_LABELS)
    install = run_helm(
        c,
        "install",
        "sealtune",
        str(CHART),
        "-n",
        OPERATOR_NS,
        "--set",
        f"encryptingStorageClasses={{{STORAGE_CLASS}}}",
    )
    assert "rollout status deployment/sealtune-operator" in install.stdout  # NOTES
    wait_ready_replicas(c, 2)
    pods = c.get_json("pods", "-n", OPERATOR_NS, "-l", "app.kubernetes.io/name=sealtune-operator")[
        "items"
    ]
    assert len({p["spec"]["nodeName"] for p in pods}) == 2  # spread over both nodes
    assert c.get_json("clusterkopfpeering", "sealtune")["metadata"]["name"] == "sealtune"
    c.get_json("validatingadmissionpolicybinding", "sealtune-managed-objects")

    # NetworkPolicy: the API server's real endpoint was looked up at install time.
    np = c.get_json("networkpolicy", "sealtune-operator", "-n", OPERATOR_NS)
    assert np["metadata"]["annotations"]["sealtune.io/apiserver-egress"] == "cidrs"
    egress = np["spec"]["egress"]
    assert egress[0]["to"] == [{"ipBlock": {"cidr": f"{APISERVER_IP}/32"}}]
    assert api_port in [p["port"] for p in egress[0]["ports"]]

    for verb, res in OPERATOR_MAY:
        assert can_i(c, verb, res), f"operator cannot {verb} {res}"
    for verb, res in OPERATOR_MAY_NOT:
        assert not can_i(c, verb, res), f"operator may {verb} {res}"

    # A real operator process authenticating as the chart's ServiceAccount.
    op = OperatorProcess(c, "chart-operator").start()
    ns = Namespace(c, "team-a")
    try:
        c.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns.name,
                    "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
                },
            }
        )
        ns.prerequisites_for_example("gitops-job")
        check_job_reconciles_without_drift(c, ns)
        check_admission_policy(c, ns)
        # Deleting the job removes its children: the garbage collector passes the policy.
        ns.kubectl("delete", "finetunejob", "gitops-job", "--wait=true", "--timeout=60s")
        wait_for(
            lambda: (
                not ns.get(
                    "networkpolicies", "-l", "app.kubernetes.io/managed-by=sealtune-operator"
                )["items"]
            ),
            what="managed NetworkPolicy garbage-collected",
        )
        # A CR that must survive upgrade and uninstall.
        ns.apply(ftj_manifest("kept-job"))
        wait_for(
            lambda: (
                (ns.get_or_none("finetunejob", "kept-job") or {}).get("status", {}).get("phase")
            ),
            what="kept-job reconciled",
        )
    finally:
        op.stop()

    # Upgrade: values change, and CRDs switch to templates so upgrades update them.
    run_helm(
        c,
        "upgrade",
        "sealtune",
        str(CHART),
        "-n",
        OPERATOR_NS,
        "--reuse-values",
        "--set",
        "replicaCount=3",
        "--set",
        "crds.manageAsTemplates=true",
        "--take-ownership",
    )
    wait_ready_replicas(c, 3)
    crd = c.get_json("crd", "finetunejobs.sealtune.io")
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "sealtune"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    history = json.loads(run_helm(c, "history", "sealtune", "-n", OPERATOR_NS, "-o", "json").stdout)
    assert [h["revision"] for h in history] == [1, 2]

    # Uninstall: the operator and its policies go; CRDs and CRs stay.
    run_helm(c, "uninstall", "sealtune", "-n", OPERATOR_NS, "--wait", "--timeout", "120s")
    gone = c.kubectl("get", "deployment/sealtune-operator", "-n", OPERATOR_NS, check=False)
    assert gone.returncode != 0
    for obj in (
        "clusterrole/sealtune-operator",
        "clusterkopfpeering/sealtune",
        "validatingadmissionpolicy/sealtune-managed-objects",
    ):
        assert c.kubectl("get", obj, check=False).returncode != 0, obj
    for name in ("finetunejobs.sealtune.io", "kopfpeerings.kopf.dev"):
        assert c.get_json("crd", name)["metadata"]["name"] == name
    assert ns.get("finetunejob", "kept-job")["metadata"]["name"] == "kept-job"


def check_job_reconciles_without_drift(c: LocalCluster, ns: Namespace) -> None:
    """After the operator reconciles a job, spec and annotations are exactly as applied."""
    manifest = ftj_manifest("gitops-job")
    manifest["metadata"]["annotations"] = {
        "argocd.argoproj.io/tracking-id": "ml:sealtune.io/FineTuneJob:team-a/gitops-job"
    }
    created = json.loads(
        ns.kubectl("create", "-o", "json", "-f", "-", input=yaml.safe_dump(manifest)).stdout
    )
    wait_for(
        lambda: ns.get("jobs.batch", "-l", "app.kubernetes.io/managed-by=sealtune-operator")[
            "items"
        ],
        what="trainer Job created",
        timeout=90,
    )
    wait_for(
        lambda: (
            (ns.get("finetunejob", "gitops-job").get("status") or {}).get("observedGeneration")
            == created["metadata"]["generation"]
        ),
        what="status.observedGeneration",
        timeout=60,
    )
    now = ns.get("finetunejob", "gitops-job")
    assert now["spec"] == created["spec"]
    assert now["metadata"].get("annotations") == manifest["metadata"]["annotations"]
    assert now["metadata"].get("labels") == created["metadata"].get("labels")
    assert now["metadata"]["generation"] == created["metadata"]["generation"]
    assert now["status"]["phase"] in ("Pending", "Running")


def check_admission_policy(c: LocalCluster, ns: Namespace) -> None:
    managed = "app.kubernetes.io/managed-by=sealtune-operator"
    np = ns.get("networkpolicies", "-l", managed)["items"][0]["metadata"]["name"]
    # kubectl create/delete only, like the operator: the key Secret it made.
    secret = wait_for(lambda: ns.get("secrets", "-l", managed)["items"], what="managed key Secret")[
        0
    ]["metadata"]["name"]

    # A cluster admin (system:masters) editing a managed object: refused, readably.
    for args in (
        ("label", "networkpolicy", np, "opened=true"),
        ("delete", "networkpolicy", np),
        ("delete", "secret", secret),
        ("label", "networkpolicy", np, "app.kubernetes.io/managed-by-"),
    ):
        proc = ns.kubectl(*args, check=False)
        assert proc.returncode != 0, f"{args} was allowed"
        assert "ValidatingAdmissionPolicy 'sealtune-managed-objects'" in proc.stderr, proc.stderr
        assert "is managed by the Sealtune operator" in proc.stderr
        assert f"only {OPERATOR_USER} may" in proc.stderr
        assert "Edit or delete the owning FineTuneJob" in proc.stderr
    assert ns.get("networkpolicy", np)["metadata"]["labels"].get("opened") is None

    # Unmanaged objects are untouched by the policy.
    ns.apply(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "user-owned"},
            "spec": {"podSelector": {}},
        }
    )
    ns.kubectl("label", "networkpolicy", "user-owned", "edited=true")
    ns.kubectl("delete", "networkpolicy", "user-owned")

    # The operator's own ServiceAccount may update (it holds the RBAC and the policy allows).
    ns.kubectl("annotate", "networkpolicy", np, "sealtune.io/probe=1", "--as", OPERATOR_USER)
    assert ns.get("networkpolicy", np)["metadata"]["annotations"]["sealtune.io/probe"] == "1"
