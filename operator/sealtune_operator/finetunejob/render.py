"""Children of a FineTuneJob, rendered as plain manifests (no API calls here).

Creation order is the contract of security invariant 1: `children()` returns them in
the order the handler must apply them, NetworkPolicy first.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from sealtune_api.exitcodes import ExitCode
from sealtune_api.finetunejob import FineTuneJob, FineTuneJobSpec, PvcPath
from sealtune_api.trainer_config import Mounts, TrainerConfig
from sealtune_operator.common import render as common
from sealtune_operator.common.render import CONFIG_DIR, Manifest, mount
from sealtune_operator.settings import OperatorSettings

KIND = "finetunejob"
COMPONENT = "trainer"
CONFIG_FILE = "config.json"
TERMINATION_LOG = "/dev/termination-log"
CHECKPOINT_KEY = "key"
# Exit codes of the trainer that retrying cannot fix (the one table in sealtune_api).
PERMANENT_EXIT_CODES = ExitCode.permanent()

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


class Names(common.Names):
    def __init__(self, job_name: str) -> None:
        super().__init__(job_name, COMPONENT, COMPONENT)
        self.checkpoint_key = f"{job_name}-checkpoint-key"
        self.checkpoint_pvc = f"{job_name}-checkpoints"
        self.job = self.service_account


def trainer_labels(name: str) -> dict[str, str]:
    return common.labels(KIND, name, COMPONENT)


def _name(owner: Manifest) -> str:
    return str(owner["metadata"]["name"])


def network_policy(owner: Manifest, settings: OperatorSettings) -> Manifest:
    """Deny all egress; admit only the operator's pods, only on the metrics port."""
    name = _name(owner)
    operator_pods = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": settings.operator_namespace}
        },
        "podSelector": {"matchLabels": dict(settings.operator_pod_labels)},
    }
    port = {"protocol": "TCP", "port": settings.trainer_metrics_port}
    return common.network_policy(
        owner,
        Names(name).network_policy,
        trainer_labels(name),
        {"sealtune.io/finetunejob": name},
        [{"from": [operator_pods], "ports": [port]}],
    )


def checkpoint_key_secret(owner: Manifest, key: bytes) -> Manifest:
    """The per-job checkpoint key; deleting it crypto-shreds leftover checkpoints."""
    name = _name(owner)
    return {
        **common.child("v1", "Secret", owner, Names(name).checkpoint_key, trainer_labels(name)),
        "type": "Opaque",
        "immutable": True,
        "data": {CHECKPOINT_KEY: base64.b64encode(key).decode()},
    }


def checkpoint_pvc(owner: Manifest, spec: FineTuneJobSpec) -> Manifest:
    name = _name(owner)
    pvc = common.child(
        "v1", "PersistentVolumeClaim", owner, Names(name).checkpoint_pvc, trainer_labels(name)
    )
    pvc["spec"] = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": spec.checkpoints.storage_class_name,
        "resources": {"requests": {"storage": spec.checkpoints.size}},
    }
    return pvc


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
    name = _name(owner)
    cfg = trainer_config(owner, spec, settings)
    text = json.dumps(cfg.wire(), indent=2, sort_keys=True)
    return common.config_map(
        owner, Names(name).config_map, trainer_labels(name), {CONFIG_FILE: text}
    )


def service_account(owner: Manifest) -> Manifest:
    name = _name(owner)
    return common.service_account(owner, Names(name).service_account, trainer_labels(name))


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
        entry = volumes.setdefault(vol, common.claim_volume(vol, pvc.claim_name))
        if not read_only:
            entry["persistentVolumeClaim"]["readOnly"] = False
        mounts.append(mount(vol, MOUNTS[use], read_only))
    return list(volumes.values()), mounts


def _pod_spec(owner: Manifest, spec: FineTuneJobSpec, settings: OperatorSettings) -> Manifest:
    """The trainer pod: the common hardened pod, keys as 0400 files, plaintext on tmpfs."""
    names = Names(_name(owner))
    pvc_volumes, pvc_mounts = _pvc_volumes(spec)
    volumes: list[dict[str, Any]] = [
        common.config_volume(names.config_map),
        common.secret_key_volume(
            "dataset-key", spec.dataset.key_secret.name, spec.dataset.key_secret.key
        ),
        common.secret_key_volume(
            "output-key", spec.output.key_secret.name, spec.output.key_secret.key
        ),
        common.secret_key_volume("checkpoint-key", names.checkpoint_key, CHECKPOINT_KEY),
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": names.checkpoint_pvc}},
        common.memory_volume("scratch", spec.resources.scratch_size),
        common.memory_volume("tmp", "1Gi"),
        *pvc_volumes,
    ]
    keys = ("dataset-key", "output-key", "checkpoint-key")
    mounts: list[dict[str, Any]] = [
        mount("config", CONFIG_DIR, True),
        *common.mounts(MOUNTS, keys, ("checkpoints", "scratch", "tmp")),
        *pvc_mounts,
    ]
    if spec.model.image:
        volumes.append(common.image_volume("model-image", spec.model.image.reference))
        mounts.append(mount("model-image", MOUNTS["model"], True))
    res = spec.resources
    trainer = common.container(
        COMPONENT,
        settings.trainer_image,
        mounts,
        common.resources(res.cpu, res.memory, res.gpus, res.gpu_resource_name),
        args=["--config", f"{CONFIG_DIR}/{CONFIG_FILE}"],
        ports=[{"name": "metrics", "containerPort": settings.trainer_metrics_port}],
        terminationMessagePath=TERMINATION_LOG,
        terminationMessagePolicy="File",
    )
    pod = common.pod_spec(
        settings, names.service_account, [trainer], volumes, restartPolicy="Never"
    )
    sched = spec.scheduling
    if sched.node_selector:
        pod["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        pod["tolerations"] = [t.wire() for t in sched.tolerations]
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    return pod


def job(owner: Manifest, spec: FineTuneJobSpec, settings: OperatorSettings) -> Manifest:
    """The batch/v1 Job running the trainer in a `restricted`, offline, key-on-tmpfs pod."""
    name = _name(owner)
    pod_labels = trainer_labels(name)
    job_labels = dict(pod_labels)
    queue = spec.scheduling.queue_name
    if queue:
        job_labels["kueue.x-k8s.io/queue-name"] = queue
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
            "spec": _pod_spec(owner, spec, settings),
        },
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if queue:
        job_spec["suspend"] = True
    return {
        **common.child("batch/v1", "Job", owner, Names(name).job, job_labels),
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
