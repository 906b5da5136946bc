"""Children of a FineTuneJob, rendered as plain manifests (no API calls here).

Creation order is the contract of security invariant 1: `children()` returns them in
the order the handler must apply them, NetworkPolicy first.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from sealtune_api.finetunejob import FineTuneJob, FineTuneJobSpec, PvcPath
from sealtune_api.trainer_config import Mounts, TrainerConfig
from sealtune_operator.render.common import (
    OFFLINE_ENV,
    Manifest,
    container_security_context,
    labels,
    memory_volume,
    metadata,
    pod_security_context,
    secret_key_volume,
)
from sealtune_operator.settings import OperatorSettings

KIND = "finetunejob"
COMPONENT = "trainer"
CONFIG_DIR = "/etc/sealtune"
CONFIG_FILE = "config.json"
TERMINATION_LOG = "/dev/termination-log"
CHECKPOINT_KEY = "key"
# Exit codes of the trainer that retrying cannot fix (bad config, data, key or audit).
PERMANENT_EXIT_CODES = [2, 3, 4, 5, 6]

# Mount points inside the trainer pod (the trainer reads them from its config).
MOUNTS = {
    "model": "/models",
    "dataset": "/data",
    "output": "/output",
    "checkpoints": "/checkpoints",
    "dataset-key": "/keys/dataset",
    "output-key": "/keys/output",
    "checkpoint-key": "/keys/checkpoint",
    "scratch": "/scratch",
    "tmp": "/tmp",
}


class Names:
    """Deterministic child names: a restarted operator finds what it created."""

    def __init__(self, job_name: str) -> None:
        self.network_policy = f"{job_name}-isolation"
        self.checkpoint_key = f"{job_name}-checkpoint-key"
        self.checkpoint_pvc = f"{job_name}-checkpoints"
        self.config_map = f"{job_name}-trainer-config"
        self.service_account = f"{job_name}-trainer"
        self.job = f"{job_name}-trainer"


def trainer_labels(name: str) -> dict[str, str]:
    return labels(KIND, name, COMPONENT)


def network_policy(owner: Manifest, settings: OperatorSettings) -> Manifest:
    """Deny all egress; admit only the operator's pods, only on the metrics port."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, Names(name).network_policy, trainer_labels(name)),
        "spec": {
            "podSelector": {"matchLabels": {"sealtune.io/finetunejob": name}},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [],
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {
                                    "kubernetes.io/metadata.name": settings.operator_namespace
                                }
                            },
                            "podSelector": {"matchLabels": dict(settings.operator_pod_labels)},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": settings.trainer_metrics_port}],
                }
            ],
        },
    }


def checkpoint_key_secret(owner: Manifest, key: bytes) -> Manifest:
    """The per-job checkpoint key; deleting it crypto-shreds leftover checkpoints."""
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": metadata(owner, Names(name).checkpoint_key, trainer_labels(name)),
        "data": {CHECKPOINT_KEY: base64.b64encode(key).decode()},
    }


def checkpoint_pvc(owner: Manifest, spec: FineTuneJobSpec) -> Manifest:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(owner, Names(name).checkpoint_pvc, trainer_labels(name)),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": spec.checkpoints.storage_class_name,
            "resources": {"requests": {"storage": spec.checkpoints.size}},
        },
    }


def trainer_config(
    owner: Manifest, spec: FineTuneJobSpec, settings: OperatorSettings
) -> TrainerConfig:
    """The trainer's view of the job: `TrainerConfig.from_job` with the pod's mount points."""
    mounts = Mounts(
        model=MOUNTS["model"],
        dataset=MOUNTS["dataset"],
        dataset_key_file=f"{MOUNTS['dataset-key']}/key",
        output=MOUNTS["output"],
        output_key_file=f"{MOUNTS['output-key']}/key",
        checkpoints=MOUNTS["checkpoints"],
        checkpoint_key_file=f"{MOUNTS['checkpoint-key']}/key",
        scratch=MOUNTS["scratch"],
        termination_message_path=TERMINATION_LOG,
        metrics_port=settings.trainer_metrics_port,
    )
    return TrainerConfig.from_job(FineTuneJob(metadata=owner["metadata"], spec=spec), mounts)


def config_map(owner: Manifest, spec: FineTuneJobSpec, settings: OperatorSettings) -> Manifest:
    name = owner["metadata"]["name"]
    cfg = trainer_config(owner, spec, settings)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, Names(name).config_map, trainer_labels(name)),
        "data": {CONFIG_FILE: json.dumps(cfg.wire(), indent=2, sort_keys=True)},
    }


def service_account(owner: Manifest) -> Manifest:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(owner, Names(name).service_account, trainer_labels(name)),
        "automountServiceAccountToken": False,
    }


def _pvc_volumes(spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One volume per distinct claim; each use gets its own mount with its own read-only flag."""
    uses: list[tuple[str, PvcPath, bool]] = []
    if spec.model.pvc:
        uses.append(("model", spec.model.pvc, True))
    uses.append(("dataset", spec.dataset.pvc, True))
    uses.append(("output", spec.output.pvc, False))
    volumes: dict[str, dict[str, Any]] = {}
    mounts: list[dict[str, Any]] = []
    for use, pvc, read_only in uses:
        vol = f"pvc-{pvc.claim_name}"[:63].rstrip("-.")
        entry = volumes.setdefault(
            vol,
            {"name": vol, "persistentVolumeClaim": {"claimName": pvc.claim_name, "readOnly": True}},
        )
        if not read_only:
            entry["persistentVolumeClaim"]["readOnly"] = False
        mounts.append({"name": vol, "mountPath": MOUNTS[use], "readOnly": read_only})
    return list(volumes.values()), mounts


def job(owner: Manifest, spec: FineTuneJobSpec, settings: OperatorSettings) -> Manifest:
    """The batch/v1 Job running the trainer in a `restricted`, offline, key-on-tmpfs pod."""
    name = owner["metadata"]["name"]
    names = Names(name)
    pod_labels = trainer_labels(name)
    job_labels = dict(pod_labels)
    queue = spec.scheduling.queue_name
    if queue:
        job_labels["kueue.x-k8s.io/queue-name"] = queue

    pvc_volumes, pvc_mounts = _pvc_volumes(spec)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": names.config_map, "defaultMode": 0o444}},
        secret_key_volume("dataset-key", spec.dataset.key_secret.name, spec.dataset.key_secret.key),
        secret_key_volume("output-key", spec.output.key_secret.name, spec.output.key_secret.key),
        secret_key_volume("checkpoint-key", names.checkpoint_key, CHECKPOINT_KEY),
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": names.checkpoint_pvc}},
        memory_volume("scratch", spec.resources.scratch_size),
        memory_volume("tmp", "1Gi"),
        *pvc_volumes,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "dataset-key", "mountPath": MOUNTS["dataset-key"], "readOnly": True},
        {"name": "output-key", "mountPath": MOUNTS["output-key"], "readOnly": True},
        {"name": "checkpoint-key", "mountPath": MOUNTS["checkpoint-key"], "readOnly": True},
        {"name": "checkpoints", "mountPath": MOUNTS["checkpoints"]},
        {"name": "scratch", "mountPath": MOUNTS["scratch"]},
        {"name": "tmp", "mountPath": MOUNTS["tmp"]},
        *pvc_mounts,
    ]
    if spec.model.image:
        volumes.append(
            {
                "name": "model-image",
                "image": {"reference": spec.model.image.reference, "pullPolicy": "IfNotPresent"},
            }
        )
        mounts.append({"name": "model-image", "mountPath": MOUNTS["model"], "readOnly": True})

    res = spec.resources
    limits: dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus:
        limits[res.gpu_resource_name] = str(res.gpus)
    container = {
        "name": COMPONENT,
        "image": settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        "env": list(OFFLINE_ENV),
        "ports": [{"name": "metrics", "containerPort": settings.trainer_metrics_port}],
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "File",
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": names.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "hostNetwork": False,
        "hostPID": False,
        "hostIPC": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    sched = spec.scheduling
    if sched.node_selector:
        pod_spec["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod_spec["tolerations"] = [t.wire() for t in sched.tolerations]
    if sched.priority_class_name:
        pod_spec["priorityClassName"] = sched.priority_class_name
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]

    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": COMPONENT,
                        "operator": "In",
                        "values": PERMANENT_EXIT_CODES,
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {"labels": pod_labels, "annotations": dict(spec.pod_annotations)},
            "spec": pod_spec,
        },
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if queue:
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, names.job, job_labels),
        "spec": job_spec,
    }


def children(
    owner: Manifest, spec: FineTuneJobSpec, settings: OperatorSettings, checkpoint_key: bytes
) -> list[Manifest]:
    """All children, in the order they must be created (NetworkPolicy first, Job last)."""
    return [
        network_policy(owner, settings),
        checkpoint_key_secret(owner, checkpoint_key),
        checkpoint_pvc(owner, spec),
        config_map(owner, spec, settings),
        service_account(owner),
        job(owner, spec, settings),
    ]
