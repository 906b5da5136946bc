"""Pure-function tests of the ModelServe render layer (no API server needed)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from tests.operator.test_render_finetune import assert_owned_and_labelled

from sealtune_api.crdgen import modelserve_crd
from sealtune_api.finetunejob import PvcPath, SecretKeyRef
from sealtune_api.modelserve import ModelServeSpec
from sealtune_api.serve_config import ServeConfig
from sealtune_operator.modelserve import render
from sealtune_operator.settings import OperatorSettings
from sealtune_trainer.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
SETTINGS = OperatorSettings(
    serve_image="registry.local/trainer@sha256:" + "b" * 64,
    vllm_image="registry.local/vllm@sha256:" + "c" * 64,
)
ADAPTER = render.AdapterRef(
    PvcPath(claim_name="adapters", path="clinical-notes-lora"),
    SecretKeyRef(name="adapter-output-key"),
    "d" * 64,
    16,
)
EXAMPLE = yaml.safe_load((REPO / "examples" / "modelserve.yaml").read_text())


def owner(**spec_overrides: Any) -> tuple[dict[str, Any], ModelServeSpec]:
    doc = copy.deepcopy(EXAMPLE)
    doc["spec"].update(spec_overrides)
    doc["metadata"] = {"name": "ms1", "namespace": "team", "uid": "uid-1", "generation": 3}
    return doc, ModelServeSpec.model_validate(doc["spec"])


def pod_of(deploy: dict[str, Any]) -> dict[str, Any]:
    return dict(deploy["spec"]["template"]["spec"])


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


# ----------------------------------------------------------------------------- render


def test_children_order_network_policy_first_and_pdb_only_above_one_replica() -> None:
    body, spec = owner()
    kinds = [c["kind"] for c in render.children(body, spec, ADAPTER, SETTINGS)]
    pdb = ["PodDisruptionBudget"]  # two replicas: one may be evicted at a time
    assert kinds == ["NetworkPolicy", "ConfigMap", "ServiceAccount", "Deployment", "Service", *pdb]
    for replicas in (0, 1):
        body, spec = owner(replicas=replicas)
        kinds = [c["kind"] for c in render.children(body, spec, ADAPTER, SETTINGS)]
        assert "PodDisruptionBudget" not in kinds


def test_every_child_is_owned_labelled_and_deterministic() -> None:
    body, spec = owner()
    first = render.children(body, spec, ADAPTER, SETTINGS)
    assert first == render.children(body, spec, ADAPTER, SETTINGS)
    assert_owned_and_labelled(first, "sealtune.io/modelserve", "ms1")


def test_network_policy_admits_exactly_spec_access_on_the_serving_port() -> None:
    body, spec = owner(
        access={
            "namespaces": ["analytics", "reporting"],
            "podSelectors": [
                {"matchLabels": {"app": "a"}},
                {"matchLabels": {"app": "b"}, "namespace": "other"},
                {"matchLabels": {"app": "c"}, "namespace": "team"},
            ],
            "cidrs": ["10.20.0.0/16", "fd00::/8"],
        }
    )
    np = render.network_policy(body, spec)["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"] and np["egress"] == []
    (rule,) = np["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    ns_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "analytics"}}}
    assert rule["from"] == [
        ns_peer,
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "reporting"}}},
        {"podSelector": {"matchLabels": {"app": "a"}}},
        {
            "podSelector": {"matchLabels": {"app": "b"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}},
        },
        {"podSelector": {"matchLabels": {"app": "c"}}},
        {"ipBlock": {"cidr": "10.20.0.0/16"}},
        {"ipBlock": {"cidr": "fd00::/8"}},
    ]
    # It selects the serving pods.
    deploy = render.deployment(body, spec, ADAPTER, SETTINGS)
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in np["podSelector"]["matchLabels"].items())


def test_empty_access_admits_nobody() -> None:
    body, spec = owner(access={})
    np = render.network_policy(body, spec)["spec"]
    assert np["ingress"] == [] and np["egress"] == []
    assert np["policyTypes"] == ["Ingress", "Egress"]


@pytest.mark.parametrize("runtime", ["sealtune", "vllm"])
def test_pod_is_restricted_and_keys_are_read_only_0400_secret_volumes(runtime: str) -> None:
    body, spec = owner(runtime=runtime)
    pod = pod_of(render.deployment(body, spec, ADAPTER, SETTINGS))
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert not (pod["hostNetwork"] or pod["hostPID"] or pod["hostIPC"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not any("hostPath" in v for v in pod["volumes"])
    secrets = {n: v["secret"] for n, v in volumes.items() if "secret" in v}
    assert set(secrets) == {"tls", "api-keys", "adapter-key"}
    for source in secrets.values():
        assert source["defaultMode"] == 0o400
        assert all(item["mode"] == 0o400 for item in source.get("items", []))
    assert secrets["tls"]["secretName"] == "clinical-notes-tls"
    assert [i["key"] for i in secrets["tls"]["items"]] == ["tls.crt", "tls.key"]
    assert secrets["api-keys"]["secretName"] == "clinical-notes-api-keys"
    assert secrets["adapter-key"]["secretName"] == "adapter-output-key"
    for name, vol in volumes.items():
        if "emptyDir" in vol:
            assert vol["emptyDir"]["medium"] == "Memory", name
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not container.get("envFrom")
        assert all("valueFrom" not in e for e in container.get("env", []))
        for mount in container["volumeMounts"]:
            if mount["name"] in secrets or mount["name"] in ("adapter", "model", "config"):
                assert mount["readOnly"] is True, (container["name"], mount)


def test_sealtune_runtime_probes_https_and_config_matches_mounts() -> None:
    body, spec = owner()
    deploy = render.deployment(body, spec, ADAPTER, SETTINGS)
    pod = pod_of(deploy)
    (server,) = pod["containers"]
    assert "initContainers" not in pod
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        assert server[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    assert server["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    # The command parses with the real `sealtune` CLI.
    args = build_parser().parse_args(server["command"][1:])
    assert args.command == "serve" and args.config == "/etc/sealtune/serve.json"
    cfg = ServeConfig.model_validate(
        json.loads(render.config_map(body, spec, ADAPTER)["data"]["serve.json"])
    )
    by_path = {m["mountPath"]: m for m in server["volumeMounts"]}
    assert cfg.model_dir == "/models/llama-3.1-8b-instruct" and "/models" in by_path
    assert cfg.adapter_path == "/adapters" and by_path["/adapters"]["subPath"] == (
        "clinical-notes-lora"
    )
    assert cfg.adapter_key_file == "/keys/adapter/key" and "/keys/adapter" in by_path
    assert cfg.tls_dir in by_path and cfg.api_keys_dir in by_path
    assert cfg.port == 8443 and cfg.upstream_url is None
    assert cfg.model_name == "clinical-notes-v1"
    assert cfg.rate_limit.requests_per_minute == 120 and cfg.rate_limit.burst == 20
    assert cfg.audit.path == "-" and cfg.audit.log_prompts is False
    assert cfg.device == "cuda"
    assert pod["terminationGracePeriodSeconds"] > cfg.graceful_timeout_seconds
    strategy = deploy["spec"]["strategy"]["rollingUpdate"]
    assert strategy == {"maxUnavailable": 0, "maxSurge": 1}


def test_adapter_sha_and_config_roll_the_deployment() -> None:
    body, spec = owner()
    a = render.deployment(body, spec, ADAPTER, SETTINGS)
    annotations = a["spec"]["template"]["metadata"]["annotations"]
    assert annotations[render.ADAPTER_SHA_ANNOTATION] == "d" * 64
    newer = render.AdapterRef(**{**ADAPTER.__dict__, "sha256": "e" * 64})
    b = render.deployment(body, spec, newer, SETTINGS)
    assert b["spec"]["template"] != a["spec"]["template"]
    _, limited = owner(rateLimit={"requestsPerMinute": 5})
    c = render.deployment(body, limited, ADAPTER, SETTINGS)
    config_sha = render.CONFIG_SHA_ANNOTATION
    assert c["spec"]["template"]["metadata"]["annotations"][config_sha] != annotations[config_sha]
    # Selectors never change (they are immutable on a Deployment).
    assert a["spec"]["selector"] == b["spec"]["selector"] == c["spec"]["selector"]


def test_no_pvc_path_means_no_subpath_and_audit_off_goes_nowhere() -> None:
    body, spec = owner(auditLogging={"enabled": False})
    ref = render.AdapterRef(PvcPath(claim_name="adapters"), SecretKeyRef(name="k"))
    pod = pod_of(render.deployment(body, spec, ref, SETTINGS))
    assert "subPath" not in mounts(pod["containers"][0])["adapter"]
    assert render.serve_config(body, spec, ref).audit.path == "/dev/null"
    annotations = render.deployment(body, spec, ref, SETTINGS)["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert render.ADAPTER_SHA_ANNOTATION not in annotations


def test_vllm_runtime_decrypts_into_tmpfs_behind_the_same_front() -> None:
    body, spec = owner(runtime="vllm")
    pod = pod_of(render.deployment(body, spec, ADAPTER, SETTINGS))
    (init,) = pod["initContainers"]
    vllm, front = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["adapter-plain"]["emptyDir"]["medium"] == "Memory"
    # The init container's command parses with the real CLI, writing to the tmpfs mount.
    args = build_parser().parse_args(init["command"][1:])
    assert (args.adapter, args.key_file, args.out) == (
        "/adapters",
        "/keys/adapter/key",
        "/run/adapter",
    )
    assert not args.allow_disk
    assert mounts(init)["adapter-plain"]["mountPath"] == "/run/adapter"
    # Key and ciphertext only in the init container; plaintext only read-only in vLLM.
    assert {"adapter-key", "adapter"} <= set(mounts(init))
    assert not {"adapter-key", "adapter"} & (set(mounts(vllm)) | set(mounts(front)))
    assert mounts(vllm)["adapter-plain"]["readOnly"] is True
    assert "adapter-plain" not in mounts(front)
    # vLLM: LoRA on, loopback, adapter under the served model name, requests not logged.
    assert vllm["image"] == SETTINGS.vllm_image
    assert vllm["command"] == ["vllm", "serve", "/models/llama-3.1-8b-instruct"]
    flags = vllm["args"]
    assert "--enable-lora" in flags
    assert flags[flags.index("--host") + 1] == "127.0.0.1"
    assert flags[flags.index("--port") + 1] == str(render.VLLM_PORT)
    assert flags[flags.index("--max-lora-rank") + 1] == "16"
    assert flags[flags.index("--lora-modules") + 1] == "clinical-notes-v1=/run/adapter"
    assert not vllm.get("ports") and "readinessProbe" not in vllm
    env = {e["name"]: e["value"] for e in vllm["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_LOGGING_LEVEL"] == "WARNING" and env["USER"]
    assert all(env[k].startswith(("/scratch", "/tmp")) for k in ("HOME", "VLLM_CACHE_ROOT"))
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The front: same TLS/API-key server, proxy mode, the only port, no GPU.
    assert front["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]
    assert front["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert "nvidia.com/gpu" not in front["resources"]["limits"]
    assert {"tls", "api-keys", "config"} <= set(mounts(front))
    cfg = ServeConfig.model_validate(
        json.loads(render.config_map(body, spec, ADAPTER)["data"]["serve.json"])
    )
    assert cfg.upstream_url == "http://127.0.0.1:8000"
    assert cfg.upstream_model == "clinical-notes-v1"


@pytest.mark.parametrize(("rank", "flag"), [(None, 64), (4, 8), (16, 16), (100, 128), (999, 512)])
def test_vllm_max_lora_rank_is_a_supported_value(rank: int | None, flag: int) -> None:
    body, spec = owner(runtime="vllm")
    ref = render.AdapterRef(**{**ADAPTER.__dict__, "rank": rank})
    vllm = pod_of(render.deployment(body, spec, ref, SETTINGS))["containers"][0]
    assert vllm["args"][vllm["args"].index("--max-lora-rank") + 1] == str(flag)


def test_service_pdb_and_endpoint() -> None:
    body, _ = owner()
    svc = render.service(body)
    assert svc["metadata"]["name"] == "ms1"
    assert svc["spec"]["selector"] == {"sealtune.io/modelserve": "ms1"}
    assert svc["spec"]["ports"][0]["port"] == 8443
    assert render.endpoint(body) == "ms1.team.svc:8443"
    pdb = render.pod_disruption_budget(body)
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": svc["spec"]["selector"]},
    }
    assert render.service_account(body)["automountServiceAccountToken"] is False


def test_no_key_material_or_secret_values_in_rendered_children() -> None:
    body, spec = owner()
    text = json.dumps(render.children(body, spec, ADAPTER, SETTINGS))
    assert '"kind": "Secret"' not in text
    assert "stringData" not in text


# ----------------------------------------------------------------------------- models


def test_spec_model_parses_example_and_rejects_extra_fields() -> None:
    _, spec = owner()
    assert spec.adapter.fine_tune_job is not None and spec.replicas == 2
    with pytest.raises(ValidationError):
        ModelServeSpec.model_validate({**EXAMPLE["spec"], "plaintext": True})
    with pytest.raises(ValidationError):
        ModelServeSpec.model_validate({**EXAMPLE["spec"], "replicas": -1})
    # Exactly-one is a CEL rule (checked by the API server, see the integration tests);
    # here it must be present in the schema.
    text = json.dumps(modelserve_crd())
    assert "(has(self.fineTuneJob) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1" in text


def test_crd_short_name_required_tls_and_bounds() -> None:
    crd = modelserve_crd()
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    assert {"tlsSecret", "apiKeySecret", "model", "adapter"} <= set(schema["spec"]["required"])
    assert crd["spec"]["names"]["shortNames"] == ["ms"]
    rate = schema["spec"]["properties"]["rateLimit"]["properties"]["requestsPerMinute"]
    assert rate["minimum"] == 0 and rate["exclusiveMinimum"] is True
    assert schema["spec"]["properties"]["replicas"]["minimum"] == 0


def test_image_model_source_mounts_a_digest_pinned_image_volume() -> None:
    ref = "registry.local/models/llama@sha256:" + "a" * 64
    body, spec = owner(model={"image": {"reference": ref, "path": "llama"}})
    pod = pod_of(render.deployment(body, spec, ADAPTER, SETTINGS))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"] == {
        "name": "model",
        "image": {"reference": ref, "pullPolicy": "IfNotPresent"},
    }
    assert mounts(pod["containers"][0])["model"]["readOnly"] is True
    assert render.serve_config(body, spec, ADAPTER).model_dir == "/models/llama"
