"""Spec and status models of the ModelServe custom resource.

Like `models.py` for FineTuneJob, these models are the one source of truth for the CRD
schema (`hack/gen_crds.py`) and for what the operator parses. The output PII filter and
the rate limit are the server's own models (`sealtune_api.serve_config`), embedded
unchanged, so the ConfigMap the operator renders is exactly what the server validates.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from sealtune_api.base import CamelModel, DnsName, Quantity, cel, dns_name, quantity
from sealtune_api.finetunejob import (
    API_VERSION,
    Condition,
    ModelSource,
    PvcPath,
    SecretKeyRef,
)
from sealtune_api.serve_config import OutputPiiConfig, RateLimitConfig

SERVING_PORT = 8443


class FineTuneJobRef(CamelModel):
    """A FineTuneJob in the ModelServe's namespace whose adapter is served."""

    name: DnsName = dns_name(
        "Name of the FineTuneJob. The adapter's PVC, path and key Secret come from its "
        "spec.output; serving waits until it has succeeded and passed its audit."
    )


class AdapterSource(CamelModel):
    """The encrypted LoRA adapter: a FineTuneJob's result, or a file on a PVC plus its key."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "(has(self.fineTuneJob) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1",
                "message": "spec.adapter must set exactly one of fineTuneJob or pvc",
            },
            {
                "rule": "!has(self.pvc) || has(self.keySecret)",
                "message": "spec.adapter.keySecret is required with spec.adapter.pvc",
            },
            {
                "rule": "!has(self.fineTuneJob) || !has(self.keySecret)",
                "message": "spec.adapter.keySecret must not be set with fineTuneJob: the key is "
                "the FineTuneJob's spec.output.keySecret",
            },
        )
    )

    fine_tune_job: FineTuneJobRef | None = Field(
        None, description="Serve the adapter a FineTuneJob produced (rolls out when it succeeds)."
    )
    pvc: PvcPath | None = Field(
        None,
        description="The encrypted adapter (adapter.tar.enc, or the directory holding it) on a "
        "PersistentVolumeClaim.",
    )
    key_secret: SecretKeyRef | None = Field(
        None, description="Secret holding the adapter's key; required with pvc."
    )


class SecretRef(CamelModel):
    """A whole Secret, mounted read-only (mode 0400) into the serving pods."""

    name: DnsName = dns_name("Name of the Secret in the ModelServe's namespace.")


class PodPeer(CamelModel):
    """Pods allowed to connect, selected by labels."""

    match_labels: dict[str, str] = Field(
        description="Labels the client pods must carry (all of them).",
        min_length=1,
        json_schema_extra={"maxProperties": 32},
    )
    namespace: str | None = Field(
        None,
        max_length=63,
        description="Namespace of the client pods (default: the ModelServe's own namespace).",
        json_schema_extra=cel(
            {
                "rule": "!format.dns1123Label().validate(self).hasValue()",
                "message": "must be a valid namespace name",
            }
        ),
    )


class AccessSpec(CamelModel):
    """Who may connect. Everything not listed is refused by the NetworkPolicy (empty: nobody)."""

    namespaces: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Namespaces whose pods may connect (all pods in them).",
        json_schema_extra={
            "items": {
                "type": "string",
                "x-kubernetes-validations": [
                    {
                        "rule": "!format.dns1123Label().validate(self).hasValue()",
                        "message": "must be a valid namespace name",
                    }
                ],
                "maxLength": 63,
            }
        },
    )
    pod_selectors: list[PodPeer] = Field(
        default_factory=list, max_length=64, description="Pods (by labels) that may connect."
    )
    cidrs: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="IP ranges that may connect, in CIDR notation (e.g. 10.20.0.0/16).",
        json_schema_extra={
            "items": {
                "type": "string",
                "x-kubernetes-validations": [
                    {"rule": "isCIDR(self)", "message": "must be a CIDR such as 10.0.0.0/8"}
                ],
                "maxLength": 64,
            }
        },
    )


class AuditLoggingSpec(CamelModel):
    """One JSON audit line per request, on the server's stdout."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "!(has(self.logPrompts) && self.logPrompts) || "
                "!has(self.enabled) || self.enabled",
                "message": "auditLogging.logPrompts needs auditLogging.enabled",
            }
        )
    )

    enabled: bool = Field(
        True, description="Write one audit line per request (time, key id, status, tokens)."
    )
    log_prompts: bool = Field(
        False,
        description="Also log prompts and completions, always PII-redacted. Off by default: "
        "audit lines then carry no request text.",
    )


class ServeResources(CamelModel):
    """Compute for each serving pod."""

    cpu: Quantity = quantity(
        "2",
        "CPU request and limit of the server container (quantity).",
        "2 or 500m",
    )
    memory: Quantity = quantity(
        "8Gi",
        "Memory request and limit of the server container (quantity).",
        "8Gi",
    )
    gpus: int = Field(0, ge=0, le=16, description="GPUs per pod (vLLM needs at least 1).")
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", max_length=253, description="Extended resource name of the GPU."
    )
    scratch_size: Quantity = quantity(
        "1Gi",
        "Size limit of the memory-backed scratch volumes (/tmp, caches, and for "
        "vLLM the decrypted adapter); counts against memory.",
        "1Gi",
    )


class ModelServeSpec(CamelModel):
    """Desired state of a TLS-only, API-key-protected inference service for an adapter."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "!has(self.runtime) || self.runtime != 'vllm' || "
                "(has(self.resources) && has(self.resources.gpus) && self.resources.gpus >= 1)",
                "message": "runtime vllm needs resources.gpus >= 1",
            }
        )
    )

    model: ModelSource = Field(description="Base model the adapter was trained on.")
    adapter: AdapterSource = Field(description="The encrypted LoRA adapter to serve.")
    model_name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-._A-Za-z0-9]*$",
        description="Model id clients send in requests and see on /v1/models "
        "(default: the ModelServe's name).",
    )
    replicas: int = Field(1, ge=0, le=100, description="Serving pods (0 scales the service down).")
    runtime: Literal["sealtune", "vllm"] = Field(
        "sealtune",
        description="sealtune: the built-in transformers server; vllm: vLLM with LoRA behind "
        "the same TLS/API-key front (needs a GPU).",
    )
    api_key_secret: SecretRef = Field(
        description="Secret of API-key hashes (from `sealtune apikey create`); one entry per key."
    )
    tls_secret: SecretRef = Field(
        description="kubernetes.io/tls Secret (tls.crt, tls.key) of the server; there is no "
        "plaintext mode."
    )
    access: AccessSpec = Field(
        default_factory=AccessSpec,
        description="Who may connect; the NetworkPolicy admits only these peers, on the serving "
        "port.",
    )
    output_pii_filter: OutputPiiConfig = Field(
        default_factory=lambda: OutputPiiConfig.model_validate({}),
        description="Mask PII in completions.",
    )
    rate_limit: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig.model_validate({}),
        description="Per-API-key rate limit (429 with Retry-After beyond).",
    )
    audit_logging: AuditLoggingSpec = Field(
        default_factory=AuditLoggingSpec, description="Per-request audit log."
    )
    resources: ServeResources = Field(
        default_factory=ServeResources, description="Compute for each serving pod."
    )


# ---------------------------------------------------------------------------- status


class ModelServeStatus(CamelModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(extra="allow")

    phase: Literal["Pending", "Ready", "Degraded", "Failed"] | None = Field(
        None, description="Pending, Ready, Degraded or Failed."
    )
    observed_generation: int | None = Field(
        None, description="Last metadata.generation acted upon."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Current conditions.")
    replicas: int | None = Field(None, description="Serving pods wanted.")
    ready_replicas: int | None = Field(None, description="Serving pods ready.")
    endpoint: str | None = Field(
        None, description="In-cluster address of the service: <service>.<namespace>.svc:8443."
    )
    adapter_sha256: str | None = Field(
        None, description="sha256 of the adapter ciphertext being rolled out (FineTuneJob source)."
    )
    deployment_name: str | None = Field(None, description="Name of the serving Deployment.")


class ModelServe(CamelModel):
    """A ModelServe as read from the API server (only the parts the operator uses)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: Literal["ModelServe"] = "ModelServe"
    metadata: dict[str, Any]
    spec: ModelServeSpec
