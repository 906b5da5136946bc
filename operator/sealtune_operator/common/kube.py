"""Thin, typed access to the Kubernetes API for the handlers.

Only the handlers call this module. Every write is idempotent: creating an object that
already exists is success, deleting one that is gone is success.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from sealtune_api.finetunejob import GROUP, VERSION

Manifest = dict[str, Any]


@functools.cache
def api_client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    config = kubernetes.client.Configuration.get_default_copy()
    # The handlers run in a thread pool; one connection per worker avoids queueing.
    config.connection_pool_maxsize = 64
    return kubernetes.client.ApiClient(config)


@functools.cache
def _apis() -> dict[str, Any]:
    # Cached: the client resolves these classes through a module-level __getattr__ that
    # takes the import lock, which serializes every worker thread.
    client = api_client()
    return {
        "core": kubernetes.client.CoreV1Api(client),
        "batch": kubernetes.client.BatchV1Api(client),
        "net": kubernetes.client.NetworkingV1Api(client),
        "apps": kubernetes.client.AppsV1Api(client),
        "policy": kubernetes.client.PolicyV1Api(client),
        "custom": kubernetes.client.CustomObjectsApi(client),
    }


_KINDS: dict[str, tuple[str, str]] = {
    "NetworkPolicy": ("net", "network_policy"),
    "Secret": ("core", "secret"),
    "PersistentVolumeClaim": ("core", "persistent_volume_claim"),
    "ConfigMap": ("core", "config_map"),
    "ServiceAccount": ("core", "service_account"),
    "Service": ("core", "service"),
    "Job": ("batch", "job"),
    "Deployment": ("apps", "deployment"),
    "PodDisruptionBudget": ("policy", "pod_disruption_budget"),
}


def warm() -> None:
    """Load the configuration and the API classes once, before the handlers' threads need
    them all at the same moment."""
    _apis()


def _method(kind: str, verb: str) -> Callable[..., Any]:
    group, suffix = _KINDS[kind]
    return getattr(_apis()[group], f"{verb}_namespaced_{suffix}")


def _send(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Make a request without deserializing its response (most of the client's CPU time
    per request), then drain the response and return the connection to the pool (an unread
    response keeps it, and the next request would pay a new TLS handshake)."""
    response = call(*args, _preload_content=False, **kwargs)
    response.drain_conn()
    response.release_conn()


def create(manifest: Manifest) -> bool:
    """Create the object; False if it already existed (not an error: we are idempotent)."""
    meta = manifest["metadata"]
    try:
        _send(_method(manifest["kind"], "create"), meta["namespace"], manifest)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


FIELD_MANAGER = "sealtune-operator"


def apply(manifest: Manifest) -> None:
    """Server-side apply: create the object or converge it to the manifest; fields the
    operator stops rendering are removed (used for long-lived, mutable children)."""
    meta = manifest["metadata"]
    _send(
        _method(manifest["kind"], "patch"),
        meta["name"],
        meta["namespace"],
        manifest,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )


def delete(kind: str, namespace: str, name: str, propagation: str = "Background") -> bool:
    """Delete if present; False when it was already gone."""
    try:
        _method(kind, "delete")(
            name, namespace, body=kubernetes.client.V1DeleteOptions(propagation_policy=propagation)
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def patch_status(plural: str, namespace: str, name: str, status: Manifest) -> None:
    """Merge-patch the status subresource."""
    _send(
        _apis()["custom"].patch_namespaced_custom_object_status,
        *_custom(plural, namespace, name),
        {"status": status},
    )


def patch_metadata(plural: str, namespace: str, name: str, metadata: Manifest) -> None:
    """Merge-patch the object's metadata (finalizers only; with resourceVersion: 409 if stale)."""
    _send(
        _apis()["custom"].patch_namespaced_custom_object,
        *_custom(plural, namespace, name),
        {"metadata": metadata},
    )


def _custom(plural: str, namespace: str, name: str) -> tuple[str, str, str, str, str]:
    return GROUP, VERSION, namespace, plural, name


def list_custom(plural: str, namespace: str) -> list[Manifest]:
    """Our custom objects of one kind in a namespace ([] if the CRD is not installed)."""
    try:
        found = _apis()["custom"].list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    except ApiException as exc:
        if exc.status == 404:
            return []
        raise
    return list(found.get("items") or [])


def patch_status_if_unchanged(
    plural: str, namespace: str, name: str, resource_version: str, status: Manifest
) -> bool:
    """Merge-patch status only if the object is still at `resource_version` (False: 409)."""
    body = {"metadata": {"resourceVersion": resource_version}, "status": status}
    try:
        _apis()["custom"].patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, body, _preload_content=False
        )
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


def get_custom(plural: str, namespace: str, name: str) -> Manifest | None:
    try:
        obj = _apis()["custom"].get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(obj)


class ApiError(Exception):
    """An API failure reduced to a reason and a message fit for a status condition."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def explain(exc: ApiException, what: str) -> ApiError:
    """Turn an ApiException into a readable condition (never echoing request bodies)."""
    reason = {403: "Forbidden", 404: "NotFound", 422: "Invalid"}.get(exc.status or 0, "ApiError")
    detail = exc.reason or ""
    try:
        import json

        detail = json.loads(exc.body or "{}").get("message", detail)
    except ValueError:
        pass
    return ApiError(reason, f"cannot create {what}: {detail}")
