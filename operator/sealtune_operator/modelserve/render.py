"""Children of a ModelServe, rendered as plain manifests (no API calls here).

`children()` returns them in the order the handler applies them: the NetworkPolicy that
admits only `spec.access` comes first (security invariant 1), the Deployment after
everything it mounts or runs as, the PodDisruptionBudget last.

Two runtimes share one front: `sealtune` runs `sealtune serve` with the base model and
the encrypted adapter (decrypted straight into memory); `vllm` runs vLLM on loopback
with the adapter decrypted by an init container into a memory-backed emptyDir, and
`sealtune serve` in front-proxy mode as the only listener (TLS, API keys, limits, PII
filter, audit log). See docs/serving.md and docs/modelserve.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sealtune_api.finetunejob import PvcPath, SecretKeyRef
from sealtune_api.modelserve import SERVING_PORT, ModelServeSpec
from sealtune_api.serve_config import AuditLogConfig, ServeConfig
from sealtune_operator.common import render as common
from sealtune_operator.common.render import CONFIG_DIR, Manifest, mount
from sealtune_operator.settings import OperatorSettings

KIND = "modelserve"
COMPONENT = "server"
CONFIG_FILE = "serve.json"
VLLM_PORT = 8000
ADAPTER_SHA_ANNOTATION = "sealtune.io/adapter-sha256"
CONFIG_SHA_ANNOTATION = "sealtune.io/config-sha256"
GRACEFUL_TIMEOUT_SECONDS = 30
# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)

# Mount points (the server's defaults: docs/serving.md, "Where things are mounted").
MOUNTS = {
    "model": "/models",
    "adapter": "/adapters",
    "adapter-key": "/keys/adapter",
    "tls": "/tls",
    "api-keys": "/apikeys",
    "scratch": "/scratch",
    "tmp": "/tmp",
    "adapter-plain": "/run/adapter",
    "shm": "/dev/shm",
}


@dataclass(frozen=True)
class AdapterRef:
    """Where the encrypted adapter is (a path in a PVC, and its key), resolved from the spec
    or a FineTuneJob's spec.output, with the digest and LoRA rank that job reported."""

    pvc: PvcPath
    key_secret: SecretKeyRef
    sha256: str | None = None
    rank: int | None = None


class Names(common.Names):
    def __init__(self, serve_name: str) -> None:
        super().__init__(serve_name, COMPONENT, "serve")
        self.deployment = self.service_account
        self.service = serve_name
        self.pod_disruption_budget = self.service_account


def server_labels(name: str) -> dict[str, str]:
    return common.labels(KIND, name, COMPONENT)


def selector(name: str) -> dict[str, str]:
    """Pod selector of the Deployment, Service, NetworkPolicy and PDB (immutable, minimal)."""
    return {f"sealtune.io/{KIND}": name}


def endpoint(owner: Manifest) -> str:
    meta = owner["metadata"]
    return f"{Names(meta['name']).service}.{meta['namespace']}.svc:{SERVING_PORT}"


def model_name(owner: Manifest, spec: ModelServeSpec) -> str:
    return spec.model_name or str(owner["metadata"]["name"])


def _model_path(spec: ModelServeSpec) -> str:
    model = spec.model
    return model.pvc.path if model.pvc else model.image.path if model.image else ""


def _join(root: str, path: str) -> str:
    return f"{root}/{path}".rstrip("/") if path else root


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _peers(owner: Manifest, spec: ModelServeSpec) -> list[dict[str, Any]]:
    """NetworkPolicy peers, one per entry of spec.access, in spec order."""
    access = spec.access
    peers: list[dict[str, Any]] = [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
        for ns in access.namespaces
    ]
    for pod in access.pod_selectors:
        peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(pod.match_labels)}}
        if pod.namespace and pod.namespace != owner["metadata"]["namespace"]:
            peer["namespaceSelector"] = {
                "matchLabels": {"kubernetes.io/metadata.name": pod.namespace}
            }
        peers.append(peer)
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in access.cidrs]
    return peers


def network_policy(owner: Manifest, spec: ModelServeSpec) -> Manifest:
    """Deny all egress; admit only the peers in spec.access, only on the serving port."""
    name = owner["metadata"]["name"]
    peers = _peers(owner, spec)
    ingress = (
        [{"from": peers, "ports": [{"protocol": "TCP", "port": SERVING_PORT}]}] if peers else []
    )
    return common.network_policy(
        owner, Names(name).network_policy, server_labels(name), selector(name), ingress
    )


def serve_config(owner: Manifest, spec: ModelServeSpec, adapter: AdapterRef) -> ServeConfig:
    """The server's configuration; paths are the mounts below (the server's defaults)."""
    name = model_name(owner, spec)
    audit = AuditLogConfig(
        path="-" if spec.audit_logging.enabled else "/dev/null",
        log_prompts=spec.audit_logging.log_prompts,
    )
    common: dict[str, Any] = {
        "model_name": name,
        "tls_dir": MOUNTS["tls"],
        "api_keys_dir": MOUNTS["api-keys"],
        "port": SERVING_PORT,
        "rate_limit": spec.rate_limit,
        "pii_filter": spec.output_pii_filter,
        "audit": audit,
        "graceful_timeout_seconds": GRACEFUL_TIMEOUT_SECONDS,
    }
    if spec.runtime == "vllm":
        return ServeConfig(
            **common,
            adapter_path=None,
            upstream_url=f"http://127.0.0.1:{VLLM_PORT}",
            upstream_model=name,
        )
    return ServeConfig(
        **common,
        model_dir=_join(MOUNTS["model"], _model_path(spec)),
        adapter_path=MOUNTS["adapter"],
        adapter_key_file=f"{MOUNTS['adapter-key']}/key",
        device="cuda" if spec.resources.gpus else "cpu",
    )


def config_json(owner: Manifest, spec: ModelServeSpec, adapter: AdapterRef) -> str:
    return json.dumps(serve_config(owner, spec, adapter).wire(), indent=2, sort_keys=True)


def config_map(owner: Manifest, spec: ModelServeSpec, adapter: AdapterRef) -> Manifest:
    name = owner["metadata"]["name"]
    data = {CONFIG_FILE: config_json(owner, spec, adapter)}
    return common.config_map(owner, Names(name).config_map, server_labels(name), data)


def service_account(owner: Manifest) -> Manifest:
    name = owner["metadata"]["name"]
    return common.service_account(owner, Names(name).service_account, server_labels(name))


def _https_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "https", "scheme": "HTTPS"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _resources(spec: ModelServeSpec) -> dict[str, Any]:
    res = spec.resources
    return common.resources(res.cpu, res.memory, res.gpus, res.gpu_resource_name)


def _front_container(spec: ModelServeSpec, settings: OperatorSettings) -> dict[str, Any]:
    """`sealtune serve`: the only listener of the pod, TLS on the serving port."""
    mounts = [
        mount("config", CONFIG_DIR, True),
        *common.mounts(MOUNTS, ("tls", "api-keys"), ("scratch", "tmp")),
    ]
    if spec.runtime == "sealtune":
        mounts += common.mounts(MOUNTS, ("model", "adapter", "adapter-key"))
        resources = _resources(spec)
    else:
        # A proxy: modest fixed resources, no GPU, no model, no adapter, no key.
        resources = common.resources("1", "1Gi")
    return common.container(
        COMPONENT if spec.runtime == "sealtune" else "front",
        settings.serve_image,
        mounts,
        resources,
        command=["sealtune", "serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        ports=[{"name": "https", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        startupProbe=_https_probe("/healthz", 5, 60),
        readinessProbe=_https_probe("/readyz", 5, 3),
        livenessProbe=_https_probe("/healthz", 10, 3),
    )


def _vllm_max_lora_rank(rank: int | None) -> int:
    wanted = rank or 64
    return next((r for r in VLLM_LORA_RANKS if r >= wanted), VLLM_LORA_RANKS[-1])


def _vllm_containers(
    owner: Manifest, spec: ModelServeSpec, adapter: AdapterRef, settings: OperatorSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(init container decrypting the adapter into tmpfs, vLLM container on loopback)."""
    name = model_name(owner, spec)
    init = common.container(
        "decrypt-adapter",
        settings.serve_image,
        common.mounts(MOUNTS, ("adapter", "adapter-key"), ("adapter-plain", "scratch", "tmp")),
        {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        command=[
            "sealtune",
            "adapter",
            "unpack",
            "--adapter",
            MOUNTS["adapter"],
            "--key-file",
            f"{MOUNTS['adapter-key']}/key",
            "--out",
            MOUNTS["adapter-plain"],
        ],
    )
    vllm_env = [
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "VLLM_DO_NOT_TRACK", "value": "1"},
        # INFO logs carry request details; WARNING keeps prompts out of the logs.
        {"name": "VLLM_LOGGING_LEVEL", "value": "WARNING"},
        {"name": "VLLM_CACHE_ROOT", "value": f"{MOUNTS['scratch']}/vllm"},
        {"name": "XDG_CACHE_HOME", "value": f"{MOUNTS['scratch']}/cache"},
        {"name": "HF_HOME", "value": f"{MOUNTS['scratch']}/hf"},
        # uid 65532 has no passwd entry in the vLLM image; getpass.getuser() (torch
        # compile caches) falls back to $USER instead of failing.
        {"name": "USER", "value": "sealtune"},
    ]
    vllm = common.container(
        "vllm",
        settings.vllm_image,
        common.mounts(MOUNTS, ("model", "adapter-plain"), ("scratch", "tmp", "shm")),
        _resources(spec),
        extra_env=vllm_env,
        command=["vllm", "serve", _join(MOUNTS["model"], _model_path(spec))],
        args=[
            "--host",
            "127.0.0.1",
            "--port",
            str(VLLM_PORT),
            "--served-model-name",
            f"{name}-base",
            "--enable-lora",
            "--max-loras",
            "1",
            "--max-lora-rank",
            str(_vllm_max_lora_rank(adapter.rank)),
            "--lora-modules",
            f"{name}={MOUNTS['adapter-plain']}",
        ],
    )
    return init, vllm


def _volumes(spec: ModelServeSpec, adapter: AdapterRef, names: Names) -> list[dict[str, Any]]:
    res = spec.resources
    volumes: list[dict[str, Any]] = [
        common.config_volume(names.config_map),
        common.secret_volume(
            "tls", tls_secret_name(spec), {"tls.crt": "tls.crt", "tls.key": "tls.key"}
        ),
        common.secret_volume("api-keys", spec.api_key_secret.name),
        common.secret_key_volume("adapter-key", adapter.key_secret.name, adapter.key_secret.key),
        common.claim_volume("adapter", adapter.pvc.claim_name),
        common.memory_volume("scratch", res.scratch_size),
        common.memory_volume("tmp", res.scratch_size),
    ]
    if spec.model.pvc:
        volumes.append(common.claim_volume("model", spec.model.pvc.claim_name))
    elif spec.model.image:
        volumes.append(common.image_volume("model", spec.model.image.reference))
    if spec.runtime == "vllm":
        volumes.append(common.memory_volume("adapter-plain", res.scratch_size))
        volumes.append(common.memory_volume("shm", res.scratch_size))
    return volumes


def tls_secret_name(spec: ModelServeSpec) -> str:
    return spec.tls_secret.name


def _adapter_mount_subpath(containers: list[dict[str, Any]], adapter: AdapterRef) -> None:
    """Expose only the adapter's file or directory of the claim, never the whole volume."""
    if not adapter.pvc.path:
        return
    for container in containers:
        for volume_mount in container["volumeMounts"]:
            if volume_mount["name"] == "adapter":
                volume_mount["subPath"] = adapter.pvc.path


def deployment(
    owner: Manifest, spec: ModelServeSpec, adapter: AdapterRef, settings: OperatorSettings
) -> Manifest:
    """The serving Deployment: the common hardened pod, keys as 0400 files, HTTPS probes."""
    name = owner["metadata"]["name"]
    names = Names(name)
    pod_labels = {**server_labels(name), **selector(name)}
    annotations = {CONFIG_SHA_ANNOTATION: _sha256(config_json(owner, spec, adapter))}
    if adapter.sha256:
        # A newer result of the FineTuneJob changes the template, so the Deployment rolls.
        annotations[ADAPTER_SHA_ANNOTATION] = adapter.sha256
    front = _front_container(spec, settings)
    init_containers: list[dict[str, Any]] = []
    containers = [front]
    if spec.runtime == "vllm":
        init, vllm = _vllm_containers(owner, spec, adapter, settings)
        init_containers = [init]
        containers = [vllm, front]
    _adapter_mount_subpath([*init_containers, *containers], adapter)
    pod_spec = common.pod_spec(
        settings,
        names.service_account,
        containers,
        _volumes(spec, adapter, names),
        init_containers,
        terminationGracePeriodSeconds=GRACEFUL_TIMEOUT_SECONDS + 15,
    )
    return {
        **common.child("apps/v1", "Deployment", owner, names.deployment, server_labels(name)),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector(name)},
            # Never below the wanted count: a bad new adapter leaves the old pods serving.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    }


def service(owner: Manifest) -> Manifest:
    name = owner["metadata"]["name"]
    return {
        **common.child("v1", "Service", owner, Names(name).service, server_labels(name)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(name),
            "ports": [
                {
                    "name": "https",
                    "protocol": "TCP",
                    "port": SERVING_PORT,
                    "targetPort": "https",
                    "appProtocol": "https",
                }
            ],
        },
    }


def pod_disruption_budget(owner: Manifest) -> Manifest:
    name = owner["metadata"]["name"]
    pdb_name = Names(name).pod_disruption_budget
    return {
        **common.child("policy/v1", "PodDisruptionBudget", owner, pdb_name, server_labels(name)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}},
    }


def children(
    owner: Manifest, spec: ModelServeSpec, adapter: AdapterRef, settings: OperatorSettings
) -> list[Manifest]:
    """All children, in the order they must be applied (NetworkPolicy first)."""
    out = [
        network_policy(owner, spec),
        config_map(owner, spec, adapter),
        service_account(owner),
        deployment(owner, spec, adapter, settings),
        service(owner),
    ]
    if spec.replicas > 1:
        out.append(pod_disruption_budget(owner))
    return out
