"""`helm lint` and `helm template` over the values sets users actually install with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.chart.chartlib import (
    CHART,
    NAMESPACE,
    VALUE_SETS,
    Render,
    by_kind,
    load_all,
    one,
    run_helm,
    values_file,
)

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
INTERNAL = "registry.internal.example:5000/"


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    container: dict[str, Any] = pod["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def all_images(docs: list[dict[str, Any]]) -> list[str]:
    """Every image the release runs or tells the operator to run."""
    images: list[str] = []
    for d in by_kind(docs, "Deployment"):
        for c in d["spec"]["template"]["spec"]["containers"]:
            images.append(c["image"])
            env = env_of(c)
            images += [
                env["SEALTUNE_TRAINER_IMAGE"],
                env["SEALTUNE_SERVE_IMAGE"],
                env["SEALTUNE_VLLM_IMAGE"],
            ]
    return images


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(helm: Path, values: str) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    if values != "default":
        args += ["-f", str(values_file(values))]
    out = run_helm(helm, *args)
    assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("values", VALUE_SETS)
def test_operator_pod_is_restricted_and_wired(render: Render, values: str) -> None:
    docs = render(values)
    deploy = one(docs, "Deployment")
    assert deploy["metadata"]["name"] == "sealtune-operator"
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "sealtune-operator"
    assert labels["app.kubernetes.io/instance"] == "sealtune"
    assert labels["app.kubernetes.io/part-of"] == "sealtune"
    assert pod["serviceAccountName"] == "sealtune-operator"
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    c = operator_container(docs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}

    assert c["command"] == ["sealtune-operator"]
    args = c["args"]
    assert args[args.index("--peering") + 1] == "sealtune"
    assert args[args.index("--priority") + 1] == "auto"
    assert args[args.index("--metrics-port") + 1] == "8080"
    assert args[args.index("--health-port") + 1] == "8081"
    env = env_of(c)
    for name in ("POD_NAME", "POD_NAMESPACE", "SEALTUNE_OPERATOR_NAMESPACE"):
        assert "fieldRef" in env[name], name
    assert env["POD_NAME"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert {"SEALTUNE_ENCRYPTING_STORAGE_CLASSES", "SEALTUNE_TRAINER_IMAGE"} <= env.keys()


def test_default_images_use_app_version(render: Render) -> None:
    images = all_images(render())
    assert images == [
        f"ghcr.io/sealtune/sealtune-operator:{APP_VERSION}",
        f"ghcr.io/sealtune/sealtune-trainer:{APP_VERSION}",
        f"ghcr.io/sealtune/sealtune-trainer:{APP_VERSION}",
        "docker.io/vllm/vllm-openai:v0.11.0",
    ]
    assert "--all-namespaces" in operator_container(render())["args"]


def test_internal_registry_rewrites_and_pins_every_image(render: Render) -> None:
    docs = render("internal-registry")
    images = all_images(docs)
    assert len(images) == 4
    for img in images:
        assert img.startswith(INTERNAL), img
        assert "@sha256:" in img and len(img.split("@sha256:")[1]) == 64, img
    assert images[0] == (f"{INTERNAL}sealtune/sealtune-operator:{APP_VERSION}@sha256:" + "1" * 64)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "internal-registry"}]
    assert one(docs, "ServiceAccount")["imagePullSecrets"] == [{"name": "internal-registry"}]
    env = env_of(operator_container(docs))
    assert env["SEALTUNE_ENCRYPTING_STORAGE_CLASSES"] == "encrypted-ssd,encrypted-nvme"
    assert env["SEALTUNE_IMAGE_PULL_SECRETS"] == "internal-registry"
    # No image anywhere in the rendered text escapes the internal registry.
    text = yaml.safe_dump_all(docs)
    assert "ghcr.io" not in text and "docker.io" not in text


def test_digest_without_tag_and_registry_override_per_image(render: Render) -> None:
    docs = render(
        "default",
        "image.tag=v9",
        "trainerImage.registry=mirror.local",
        "trainerImage.digest=sha256:" + "a" * 64,
    )
    images = all_images(docs)
    assert images[0] == "ghcr.io/sealtune/sealtune-operator:v9"
    assert images[1] == f"mirror.local/sealtune/sealtune-trainer:{APP_VERSION}@sha256:" + "a" * 64


def test_namespace_scoped(render: Render) -> None:
    docs = render("namespace-scoped")
    args = operator_container(docs)["args"]
    assert "--all-namespaces" not in args
    watched = [args[i + 1] for i, a in enumerate(args) if a == "--namespace"]
    assert watched == ["ml-fraud", "ml-claims"]
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-claims", "ml-fraud"]
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-claims", "ml-fraud"]
    for b in bindings:
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": "sealtune-operator", "namespace": NAMESPACE}
        ]
    peerings = by_kind(docs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["ml-claims", "ml-fraud"]
    assert all(p["metadata"]["name"] == "sealtune" for p in peerings)
    assert by_kind(docs, "ClusterKopfPeering") == []


def test_all_namespaces_uses_cluster_peering(render: Render) -> None:
    docs = render()
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "sealtune"
    assert by_kind(docs, "KopfPeering") == [] and by_kind(docs, "Role") == []
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_monitoring(render: Render) -> None:
    docs = render("monitoring")
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    svc = one(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert svc["spec"]["selector"] == sm["spec"]["selector"]["matchLabels"]
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert by_kind(render(), "ServiceMonitor") == [] and by_kind(render(), "PodMonitor") == []


def test_operator_network_policy_default(render: Render) -> None:
    np = one(render(), "NetworkPolicy")
    spec = np["spec"]
    deploy_labels = one(render(), "Deployment")["spec"]["selector"]["matchLabels"]
    assert spec["podSelector"]["matchLabels"] == deploy_labels
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    # No cluster to look the apiserver up in: egress limited to its ports, no DNS.
    assert spec["egress"] == [
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]}
    ]
    assert np["metadata"]["annotations"]["sealtune.io/apiserver-egress"] == "ports-only"


def test_operator_network_policy_pinned_to_apiserver(render: Render) -> None:
    np = one(render("internal-registry"), "NetworkPolicy")
    assert np["spec"]["egress"] == [
        {
            "ports": [{"port": 6443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}],
        }
    ]
    with_dns = one(render("default", "networkPolicy.allowDNS=true"), "NetworkPolicy")
    assert [p["port"] for p in with_dns["spec"]["egress"][1]["ports"]] == [53, 53]
    assert by_kind(render("default", "networkPolicy.enabled=false"), "NetworkPolicy") == []


def test_admission_policy(render: Render) -> None:
    docs = render()
    vap = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": vap["metadata"]["name"], "validationActions": ["Deny"]}
    spec = vap["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["objectSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "sealtune-operator"}
    }
    rules = {r["resources"][0]: r["operations"] for r in spec["matchConstraints"]["resourceRules"]}
    assert rules == {"secrets": ["UPDATE", "DELETE"], "networkpolicies": ["UPDATE", "DELETE"]}
    users = yaml.safe_load(spec["variables"][0]["expression"])
    assert users[0] == f"system:serviceaccount:{NAMESPACE}:sealtune-operator"
    assert "system:serviceaccount:kube-system:generic-garbage-collector" in users
    assert not any(u.startswith("system:serviceaccount:default") for u in users)
    extra = render("default", "admissionPolicy.extraAllowedUsers={alice@example.com}")
    extra_users = yaml.safe_load(
        one(extra, "ValidatingAdmissionPolicy")["spec"]["variables"][0]["expression"]
    )
    assert extra_users[-1] == "alice@example.com"
    assert (
        by_kind(render("default", "admissionPolicy.enabled=false"), "ValidatingAdmissionPolicy")
        == []
    )


def crd_names(docs: list[dict[str, Any]]) -> set[str]:
    return {d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")}


def test_crds_from_crds_folder_and_as_templates(render: Render) -> None:
    files = sorted((CHART / "crds").glob("*.yaml"))
    expected: dict[str, dict[str, Any]] = {}
    for f in files:
        for d in load_all(f.read_text()):
            if d.get("kind") == "CustomResourceDefinition":
                expected[d["metadata"]["name"]] = d
    assert {
        "finetunejobs.sealtune.io",
        "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev",
    } <= expected.keys()
    assert crd_names(render()) == set()  # crds/ is not a template by default
    assert crd_names(render(include_crds=True)) == expected.keys()
    templated = by_kind(
        render("default", "crds.manageAsTemplates=true"), "CustomResourceDefinition"
    )
    assert {d["metadata"]["name"] for d in templated} == expected.keys()
    for d in templated:
        assert d["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert d["spec"] == expected[d["metadata"]["name"]]["spec"]


def test_crds_folder_matches_generated_crds() -> None:
    """charts/sealtune/crds is a copy of crds/ (the generator writes both)."""
    top = Path(CHART).parents[1] / "crds"
    for f in sorted(top.glob("*.yaml")):
        assert (CHART / "crds" / f.name).read_text() == f.read_text(), f.name


def test_notes_tell_next_steps(helm: Path) -> None:
    out = run_helm(
        helm, "install", "sealtune", str(CHART), "--dry-run=client", "--namespace", NAMESPACE
    ).stdout
    notes = out[out.index("NOTES:") :]
    assert "rollout status deployment/sealtune-operator" in notes
    assert "StorageNotEncrypted" in notes  # warns: empty allowlist blocks every job
    out2 = run_helm(
        helm,
        "install",
        "sealtune",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        "-f",
        str(values_file("internal-registry")),
    ).stdout
    assert "StorageNotEncrypted" not in out2[out2.index("NOTES:") :]


@pytest.mark.parametrize("values", ["default", "namespace-scoped"])
def test_operator_cli_accepts_the_rendered_arguments(render: Render, values: str) -> None:
    """The chart's command line is the operator's real CLI contract."""
    from sealtune_operator.main import parse_args

    c = operator_container(render(values))
    args = parse_args(c["args"])
    assert args.peering == "sealtune" and args.priority == "auto"
    assert (args.metrics_port, args.health_port) == (8080, 8081)
    if values == "default":
        assert args.all_namespaces and args.namespace == []
    else:
        assert not args.all_namespaces and args.namespace == ["ml-fraud", "ml-claims"]
