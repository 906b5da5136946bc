"""Pieces every rendered child shares: names, labels, owner references, hardening."""

from __future__ import annotations

from typing import Any

Manifest = dict[str, Any]

MANAGED_BY = "sealtune-operator"
NONROOT_UID = 65532

OFFLINE_ENV: list[dict[str, str]] = [
    {"name": "HF_HUB_OFFLINE", "value": "1"},
    {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
    {"name": "HF_DATASETS_OFFLINE", "value": "1"},
    {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    {"name": "DO_NOT_TRACK", "value": "1"},
    {"name": "HOME", "value": "/scratch"},
]


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


def pod_security_context() -> dict[str, Any]:
    """Pod-level part of Pod Security `restricted`."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_UID,
        "runAsGroup": NONROOT_UID,
        "fsGroup": NONROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Container-level part of Pod Security `restricted`, plus a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def secret_key_volume(volume: str, secret_name: str, key: str) -> dict[str, Any]:
    """A key as a read-only file `key` with mode 0400; keys never travel in env vars."""
    return {
        "name": volume,
        "secret": {
            "secretName": secret_name,
            "items": [{"key": key, "path": "key", "mode": 0o400}],
            "defaultMode": 0o400,
            "optional": False,
        },
    }


def memory_volume(volume: str, size: str) -> dict[str, Any]:
    """Memory-backed scratch: plaintext may live here, never on a real disk."""
    return {"name": volume, "emptyDir": {"medium": "Memory", "sizeLimit": size}}
