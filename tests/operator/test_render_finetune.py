"""Pure-function tests of the FineTuneJob render layer (no API server needed)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sealtune_api.finetunejob import FineTuneJobSpec
from sealtune_api.trainer_config import TrainerConfig
from sealtune_operator.finetunejob import render
from sealtune_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
SETTINGS = OperatorSettings(trainer_image="registry.local/trainer@sha256:" + "b" * 64)
KEY = bytes(range(32))


def owner(**spec_overrides: Any) -> tuple[dict[str, Any], FineTuneJobSpec]:
    doc = yaml.safe_load((REPO / "examples" / "finetunejob.yaml").read_text())
    doc["spec"].update(spec_overrides)
    doc["metadata"] = {"name": "ftj1", "namespace": "team", "uid": "uid-1", "generation": 1}
    return doc, FineTuneJobSpec.model_validate(doc["spec"])


def pod_spec(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"])


def test_children_order_network_policy_first_job_last() -> None:
    body, spec = owner()
    kinds = [c["kind"] for c in render.children(body, spec, SETTINGS, KEY)]
    before = ["NetworkPolicy", "Secret", "PersistentVolumeClaim", "ConfigMap", "ServiceAccount"]
    assert kinds == [*before, "Job"]  # the Job last: all it mounts and runs as exists first


def assert_owned_and_labelled(children: list[dict[str, Any]], label: str, name: str) -> None:
    """Every child is in the owner's namespace, controlled by it, and carries its labels."""
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "team"
        assert meta["ownerReferences"][0]["uid"] == "uid-1"
        assert meta["ownerReferences"][0]["controller"] is True
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "sealtune-operator"
        assert meta["labels"][label] == name


def test_every_child_is_owned_and_labelled() -> None:
    body, spec = owner()
    children = render.children(body, spec, SETTINGS, KEY)
    assert_owned_and_labelled(children, "sealtune.io/finetunejob", "ftj1")


def test_network_policy_denies_all_egress_and_admits_only_operator_metrics() -> None:
    body, _ = owner()
    np = render.network_policy(body, SETTINGS)
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["egress"] == []
    (rule,) = np["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": SETTINGS.trainer_metrics_port}]
    peer = rule["from"][0]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "sealtune-operator"}
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": SETTINGS.operator_namespace
    }
    # The policy selects exactly the trainer's pods.
    job = render.job(body, FineTuneJobSpec.model_validate(body["spec"]), SETTINGS)
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in np["spec"]["podSelector"]["matchLabels"].items())


def test_pod_is_restricted_offline_and_keys_are_read_only_files() -> None:
    body, spec = owner()
    job = render.job(body, spec, SETTINGS)
    pod = pod_spec(job)
    (container,) = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"} <= set(env)
    assert all("valueFrom" not in e for e in container["env"]), "no Secret may reach env"
    assert "envFrom" not in container
    secrets = [v for v in pod["volumes"] if "secret" in v]
    assert {v["name"] for v in secrets} == {"dataset-key", "output-key", "checkpoint-key"}
    for vol in secrets:
        assert vol["secret"]["defaultMode"] == 0o400
        assert all(item["mode"] == 0o400 for item in vol["secret"]["items"])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/keys/dataset", "/keys/output", "/keys/checkpoint", "/models", "/data"):
        assert mounts[path]["readOnly"] is True, path
    assert mounts["/output"]["readOnly"] is False
    scratch = next(v for v in pod["volumes"] if v["name"] == "scratch")
    assert scratch["emptyDir"]["medium"] == "Memory"
    assert all("hostPath" not in v for v in pod["volumes"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["terminationMessagePolicy"] == "File"


def test_job_failure_policy_deadline_and_queue() -> None:
    body, spec = owner(
        scheduling={
            "queueName": "gpu-queue",
            "nodeSelector": {"gpu": "a100"},
            "priorityClassName": "high",
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    )
    job = render.job(body, spec, SETTINGS)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    pod = pod_spec(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["priorityClassName"] == "high"
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_no_queue_means_not_suspended() -> None:
    body, spec = owner()
    job = render.job(body, spec, SETTINGS)
    assert "suspend" not in job["spec"]
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]


def test_shared_claim_is_one_volume_with_per_use_read_only_mounts() -> None:
    body, spec = owner(
        output={"pvc": {"claimName": "clinical-data", "path": "out"}, "keySecret": {"name": "k"}}
    )
    pod = pod_spec(render.job(body, spec, SETTINGS))
    claims = [
        v
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == "clinical-data"
    ]
    assert len(claims) == 1 and claims[0]["persistentVolumeClaim"]["readOnly"] is False
    mounts = {
        m["mountPath"]: m["readOnly"]
        for m in pod["containers"][0]["volumeMounts"]
        if m["name"] == claims[0]["name"]
    }
    assert mounts == {"/data": True, "/output": False}


def test_image_model_source_mounts_an_image_volume() -> None:
    body, spec = owner(model={"image": {"reference": "reg.local/m@sha256:" + "c" * 64}})
    pod = pod_spec(render.job(body, spec, SETTINGS))
    vol = next(v for v in pod["volumes"] if v["name"] == "model-image")
    assert vol["image"]["reference"].endswith("c" * 64)


def test_config_map_is_a_valid_trainer_config_pointing_at_mounts() -> None:
    body, spec = owner()
    cm = render.config_map(body, spec, SETTINGS)
    cfg = TrainerConfig.model_validate(json.loads(cm["data"]["config.json"]))
    assert cfg.model_dir == "/models/llama-3.1-8b-instruct"
    assert cfg.dataset.path == "/data/notes.alpaca.jsonl.enc"
    assert cfg.dataset.key_file == "/keys/dataset/key"
    assert cfg.checkpoint_key_file == "/keys/checkpoint/key"
    assert cfg.privacy.target_epsilon == 8
    assert cfg.training.rank == 16


def test_key_material_appears_only_in_the_key_secret() -> None:
    body, spec = owner()
    encoded = base64.b64encode(KEY).decode()
    for child in render.children(body, spec, SETTINGS, KEY):
        text = json.dumps(child)
        assert (encoded in text) == (child["kind"] == "Secret"), child["kind"]


def test_checkpoint_secret_carries_the_given_key_and_is_immutable() -> None:
    body, _ = owner()
    secret = render.checkpoint_key_secret(body, KEY)
    assert base64.b64decode(secret["data"]["key"]) == KEY
    assert secret["immutable"] is True


@pytest.mark.parametrize("klass", ["encrypted"])
def test_checkpoint_pvc_uses_requested_class(klass: str) -> None:
    body, spec = owner()
    pvc = render.checkpoint_pvc(body, spec)
    assert pvc["spec"]["storageClassName"] == klass
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"
