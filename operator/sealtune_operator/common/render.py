"""Pieces every rendered child shares: names, labels, owner references, and the one
hardened pod spec (security invariants 2, 3, 4 and 6) that every workload runs with.

Pure functions: manifests in, manifests out.
"""

from __future__ import annotations

import copy
from typing import Any

from sealtune_operator.settings import OperatorSettings

Manifest = dict[str, Any]

MANAGED_BY = "sealtune-operator"
NONROOT_UID = 65532
CONFIG_DIR = "/etc/sealtune"

OFFLINE_ENV: list[dict[str, str]] = [
    {"name": "HF_HUB_OFFLINE", "value": "1"},
    {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
    {"name": "HF_DATASETS_OFFLINE", "value": "1"},
    {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    {"name": "DO_NOT_TRACK", "value": "1"},
    {"name": "HOME", "value": "/scratch"},
]

# Pod Security `restricted`, pod level and container level (plus a read-only root).
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": NONROOT_UID,
    "runAsGroup": NONROOT_UID,
    "fsGroup": NONROOT_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


# ----------------------------------------------------------------------------- metadata


class Names:
    """Deterministic child names (a restarted operator finds what it created): the
    isolating NetworkPolicy, the workload's config and its ServiceAccount."""

    def __init__(self, owner: str, component: str, config: str) -> None:
        self.network_policy = f"{owner}-isolation"
        self.config_map = f"{owner}-{config}-config"
        self.service_account = f"{owner}-{component}"


def labels(kind: str, name: str, component: str) -> dict[str, str]:
    """Recommended `app.kubernetes.io/*` labels plus the owner's name for selection."""
    return {
        "app.kubernetes.io/name": f"sealtune-{component}",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "sealtune",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        f"sealtune.io/{kind}": name,
    }


def owner_reference(owner: Manifest) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(owner: Manifest, name: str, child_labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": dict(child_labels),
        "ownerReferences": [owner_reference(owner)],
    }


def child(
    api_version: str, kind: str, owner: Manifest, name: str, child_labels: dict[str, str]
) -> Manifest:
    """An owned, labelled child with no content yet."""
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata(owner, name, child_labels),
    }


# ----------------------------------------------------------------------------- children


def network_policy(
    owner: Manifest,
    name: str,
    child_labels: dict[str, str],
    selector: dict[str, str],
    ingress: list[dict[str, Any]],
) -> Manifest:
    """Deny all egress; admit only `ingress` to the pods matching `selector`."""
    return {
        **child("networking.k8s.io/v1", "NetworkPolicy", owner, name, child_labels),
        "spec": {
            "podSelector": {"matchLabels": dict(selector)},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [],
            "ingress": ingress,
        },
    }


def service_account(owner: Manifest, name: str, child_labels: dict[str, str]) -> Manifest:
    """A workload's own ServiceAccount; its token is never mounted."""
    return {
        **child("v1", "ServiceAccount", owner, name, child_labels),
        "automountServiceAccountToken": False,
    }


def config_map(
    owner: Manifest, name: str, child_labels: dict[str, str], data: dict[str, str]
) -> Manifest:
    return {**child("v1", "ConfigMap", owner, name, child_labels), "data": data}


# ----------------------------------------------------------------------------- volumes


def secret_key_volume(volume: str, secret_name: str, key: str) -> dict[str, Any]:
    """A key as a read-only file `key` with mode 0400; keys never travel in env vars."""
    return secret_volume(volume, secret_name, {key: "key"})


def secret_volume(
    volume: str, secret_name: str, items: dict[str, str] | None = None
) -> dict[str, Any]:
    """A Secret (or the listed keys, key -> file) as read-only files with mode 0400."""
    source: dict[str, Any] = {"secretName": secret_name}
    if items:
        source["items"] = [{"key": k, "path": p, "mode": 0o400} for k, p in items.items()]
    source.update({"defaultMode": 0o400, "optional": False})
    return {"name": volume, "secret": source}


def memory_volume(volume: str, size: str) -> dict[str, Any]:
    """Memory-backed scratch: plaintext may live here, never on a real disk."""
    return {"name": volume, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def config_volume(config_map_name: str) -> dict[str, Any]:
    return {"name": "config", "configMap": {"name": config_map_name, "defaultMode": 0o444}}


def claim_volume(volume: str, claim_name: str, read_only: bool = True) -> dict[str, Any]:
    return {
        "name": volume,
        "persistentVolumeClaim": {"claimName": claim_name, "readOnly": read_only},
    }


def image_volume(volume: str, reference: str) -> dict[str, Any]:
    """An OCI image (a model pinned by digest) mounted read-only as a volume."""
    return {"name": volume, "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}


def mount(volume: str, path: str, read_only: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": volume, "mountPath": path}
    if read_only is not None:
        out["readOnly"] = read_only
    return out


def mounts(
    paths: dict[str, str], read_only: tuple[str, ...] = (), writable: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Mounts of the named volumes at their `paths`, read-only ones first."""
    return [
        *(mount(volume, paths[volume], True) for volume in read_only),
        *(mount(volume, paths[volume]) for volume in writable),
    ]


# ----------------------------------------------------------------------------- pods


def resources(
    cpu: str, memory: str, gpus: int = 0, gpu_resource_name: str = "nvidia.com/gpu"
) -> dict[str, Any]:
    """Requests equal to limits (Guaranteed QoS), GPUs only when asked for."""
    limits: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits[gpu_resource_name] = str(gpus)
    return {"requests": dict(limits), "limits": limits}


def container(
    name: str,
    image: str,
    volume_mounts: list[dict[str, Any]],
    container_resources: dict[str, Any],
    extra_env: list[dict[str, str]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A hardened container: offline env only (keys are files), restricted security context."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        **fields,
        "env": [*OFFLINE_ENV, *(extra_env or [])],
        "resources": container_resources,
        "volumeMounts": volume_mounts,
        "securityContext": copy.deepcopy(CONTAINER_SECURITY_CONTEXT),
    }


def pod_spec(
    settings: OperatorSettings,
    service_account_name: str,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    init_containers: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The one pod spec every workload runs with (Pod Security `restricted`, no service
    account token, no service links, no host namespaces, pull secrets from the settings)."""
    spec: dict[str, Any] = {
        **fields,
        "serviceAccountName": service_account_name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": copy.deepcopy(POD_SECURITY_CONTEXT),
        "containers": containers,
        "volumes": volumes,
    }
    if init_containers:
        spec["initContainers"] = init_containers
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    return spec
