"""The operator's RBAC is exactly the documented least-privilege table."""

from __future__ import annotations

from typing import Any

from tests.chart.chartlib import NAMESPACE, Render, by_kind, one

Rule = tuple[str, str, frozenset[str]]
CRUD = frozenset({"get", "list", "watch", "create", "patch", "update", "delete"})

# The contract with the operator (and the integration tests): (apiGroup, resource, verbs).
EXPECTED_NAMESPACED: set[Rule] = {
    ("sealtune.io", "finetunejobs", frozenset({"get", "list", "watch", "patch", "update"})),
    ("sealtune.io", "modelserves", frozenset({"get", "list", "watch", "patch", "update"})),
    ("sealtune.io", "finetunejobs/status", frozenset({"get", "patch", "update"})),
    ("sealtune.io", "modelserves/status", frozenset({"get", "patch", "update"})),
    ("sealtune.io", "finetunejobs/finalizers", frozenset({"update"})),
    ("sealtune.io", "modelserves/finalizers", frozenset({"update"})),
    ("sealtune.io", "privacybudgets", frozenset({"get", "list", "watch"})),
    ("sealtune.io", "privacybudgets/status", frozenset({"get", "patch"})),
    ("kopf.dev", "kopfpeerings", frozenset({"get", "list", "watch", "patch"})),
    ("", "events", frozenset({"create", "patch"})),
    ("events.k8s.io", "events", frozenset({"create", "patch"})),
    ("networking.k8s.io", "networkpolicies", CRUD),
    ("", "configmaps", CRUD),
    ("", "serviceaccounts", CRUD),
    ("", "services", CRUD),
    ("batch", "jobs", CRUD),
    ("apps", "deployments", CRUD),
    ("policy", "poddisruptionbudgets", CRUD),
    ("", "persistentvolumeclaims", frozenset({"get", "list", "watch", "create", "delete"})),
    ("", "pods", frozenset({"get", "list", "watch"})),
    ("", "secrets", frozenset({"create", "delete"})),
}
EXPECTED_CLUSTER: set[Rule] = {
    ("kopf.dev", "clusterkopfpeerings", frozenset({"get", "list", "watch", "patch"})),
    ("apiextensions.k8s.io", "customresourcedefinitions", frozenset({"get", "list", "watch"})),
    ("", "namespaces", frozenset({"get", "list", "watch"})),
}


def flatten(rules: list[dict[str, Any]]) -> set[Rule]:
    """One (group, resource, verbs) triple per group x resource; no wildcards allowed."""
    out: set[Rule] = set()
    for r in rules:
        assert "resourceNames" not in r and "nonResourceURLs" not in r
        for g in r["apiGroups"]:
            for res in r["resources"]:
                assert "*" not in (g, res) and "*" not in r["verbs"]
                triple = (g, res, frozenset(r["verbs"]))
                assert triple not in out, f"duplicate rule {triple}"
                out.add(triple)
    return out


def secret_verbs(rules: set[Rule]) -> set[frozenset[str]]:
    return {v for g, r, v in rules if g == "" and r == "secrets"}


def test_all_namespaces_cluster_role_is_exact(render: Render) -> None:
    docs = render()
    role = one(docs, "ClusterRole")
    rules = flatten(role["rules"])
    assert rules == EXPECTED_NAMESPACED | EXPECTED_CLUSTER
    assert secret_verbs(rules) == {frozenset({"create", "delete"})}
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sealtune-operator", "namespace": NAMESPACE}
    ]


def test_namespace_scoped_roles_render_the_same_rules(render: Render) -> None:
    docs = render("namespace-scoped")
    assert flatten(one(docs, "ClusterRole")["rules"]) == EXPECTED_CLUSTER
    roles = by_kind(docs, "Role")
    assert len(roles) == 2
    for role in roles:
        rules = flatten(role["rules"])
        assert rules == EXPECTED_NAMESPACED
        assert secret_verbs(rules) == {frozenset({"create", "delete"})}
    # Same table: the Roles plus the small ClusterRole make up the all-namespaces role.
    cluster_all = flatten(one(render(), "ClusterRole")["rules"])
    assert flatten(roles[0]["rules"]) | EXPECTED_CLUSTER == cluster_all


def test_no_object_can_read_secrets(render: Render) -> None:
    """Across every rendered role, nothing grants get/list/watch on Secrets."""
    for values in ("default", "namespace-scoped"):
        for kind in ("ClusterRole", "Role"):
            for role in by_kind(render(values), kind):
                for g, r, verbs in flatten(role["rules"]):
                    if r == "secrets" or r.startswith("secrets/"):
                        assert not verbs & {"get", "list", "watch"}, (kind, g, r, verbs)
