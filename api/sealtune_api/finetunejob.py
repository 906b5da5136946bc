"""Spec and status models of the FineTuneJob custom resource.

These pydantic models are the one source of truth: `hack/gen_crds.py` turns them into
the CRD's OpenAPI schema (descriptions, defaults, CEL rules) and the operator parses
every object it handles through them. The training, privacy, PII and audit sections
are the trainer's own models (`sealtune_api.trainer_config`), embedded unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from sealtune_api.base import CamelModel, DnsName, Quantity, cel, dns_name, immutable, quantity
from sealtune_api.summary import LedgerEntry
from sealtune_api.trainer_config import (
    AuditConfig,
    PiiConfig,
    PrivacyConfig,
    TrainingConfig,
)

GROUP = "sealtune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class PvcPath(CamelModel):
    """A path inside an existing PersistentVolumeClaim in the job's namespace."""

    claim_name: DnsName = dns_name("Name of the PersistentVolumeClaim.")
    path: str = Field(
        "",
        max_length=1024,
        description="Relative path inside the volume ('' for its root); no leading '/', no '..'.",
        json_schema_extra=cel(
            {
                "rule": "!self.startsWith('/') && !('..' in self.split('/'))",
                "message": "must be a relative path inside the volume, without '..'",
            }
        ),
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        # Mirrors the CEL rule above for configs that never pass the API server.
        if v.startswith("/") or ".." in v.split("/"):
            raise ValueError("must be a relative path inside the volume, without '..'")
        return v


class SecretKeyRef(CamelModel):
    """A key inside a Secret; it is mounted read-only into the pod, never put in env."""

    name: DnsName = dns_name("Name of the Secret in the job's namespace.")
    key: str = Field(
        "key",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key inside the Secret whose value is the 32-byte key (raw or base64).",
    )


class ImageSource(CamelModel):
    """An OCI image that carries the model files, mounted as an image volume."""

    reference: str = Field(
        max_length=1024,
        description="Image reference pinned by digest, e.g. "
        "registry.local/models/llama@sha256:<64 hex>.",
        json_schema_extra=cel(
            {
                "rule": "self.matches('@sha256:[a-f0-9]{64}$')",
                "message": "spec.model.image.reference must be pinned by digest "
                "(…@sha256:<64 hex>)",
            }
        ),
    )
    path: str = Field("", max_length=1024, description="Directory of the model inside the image.")


class ModelSource(CamelModel):
    """The base model: exactly one of a PVC path or a digest-pinned OCI image."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "(has(self.pvc) ? 1 : 0) + (has(self.image) ? 1 : 0) == 1",
                "message": "spec.model must set exactly one of pvc or image",
            }
        )
    )

    pvc: PvcPath | None = Field(None, description="Model directory on a PersistentVolumeClaim.")
    image: ImageSource | None = Field(None, description="Model shipped as an OCI image volume.")
    manifest_sha256: str | None = Field(
        None,
        pattern=r"^[a-f0-9]{64}$",
        description="sha256 of the model's SHA256SUMS manifest; the trainer verifies every file "
        "against the manifest before loading.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.pvc is None) == (self.image is None):
            raise ValueError("spec.model must set exactly one of pvc or image")
        return self


class DatasetSource(CamelModel):
    """The encrypted training data."""

    pvc: PvcPath = Field(description="Encrypted dataset file on a PersistentVolumeClaim.")
    format: Literal["alpaca", "sharegpt", "text"] = Field(
        description="Record format: alpaca (JSON array or JSONL), sharegpt, "
        "or text (blank-line-separated blocks)."
    )
    key_secret: SecretKeyRef = Field(description="Secret holding the dataset's data key.")
    sha256: str | None = Field(
        None,
        pattern=r"^[a-f0-9]{64}$",
        description="sha256 of the encrypted dataset file. The trainer refuses a file with "
        "another digest, and PrivacyBudgets match jobs to their dataset by it (required in a "
        "namespace that has a PrivacyBudget).",
    )


class OutputSpec(CamelModel):
    """Where the encrypted adapter goes."""

    pvc: PvcPath = Field(
        description="Directory on a PersistentVolumeClaim for the encrypted adapter."
    )
    key_secret: SecretKeyRef = Field(
        description="Secret holding the key the adapter is encrypted with."
    )


class CheckpointSpec(CamelModel):
    """Per-job checkpoint volume; checkpoints are encrypted with a per-job key."""

    storage_class_name: DnsName = dns_name(
        "StorageClass of the checkpoint PVC; must be in the operator's allowlist of encrypting "
        "storage classes.",
        default="encrypted",
    )
    size: Quantity = quantity(
        "20Gi",
        "Size of the checkpoint PVC (a Kubernetes quantity such as 50Gi).",
        "50Gi",
    )
    interval_steps: int = Field(
        50, ge=1, le=1_000_000, description="Write a checkpoint every N steps."
    )


class ResourceSpec(CamelModel):
    """Compute for the trainer pod."""

    gpus: int = Field(1, ge=0, le=16, description="GPUs per node (0 trains on CPU).")
    gpu_resource_name: str = Field(
        "nvidia.com/gpu", max_length=253, description="Extended resource name of the GPU."
    )
    cpu: Quantity = quantity(
        "4",
        "CPU request and limit (quantity).",
        "4 or 500m",
    )
    memory: Quantity = quantity(
        "32Gi",
        "Memory request and limit (quantity).",
        "32Gi",
    )
    scratch_size: Quantity = quantity(
        "8Gi",
        "Size limit of the memory-backed scratch volume (counts against memory).",
        "8Gi",
    )
    nodes: int = Field(
        1, ge=1, le=1, description="Number of nodes. Only single-node training is supported yet."
    )


class Toleration(CamelModel):
    """A Kubernetes toleration."""

    key: str | None = Field(None, max_length=316, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal.")
    value: str | None = Field(None, max_length=256, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to tolerate (empty: all)."
    )
    toleration_seconds: int | None = Field(
        None, description="How long a NoExecute taint is tolerated."
    )


class SchedulingSpec(CamelModel):
    """Where and when the trainer runs."""

    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the trainer pod requires."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Tolerations of the trainer pod."
    )
    priority_class_name: str | None = Field(
        None, max_length=253, description="PriorityClass of the trainer pod."
    )
    queue_name: str | None = Field(
        None,
        max_length=63,
        description="Kueue LocalQueue; the Job is created suspended and Kueue admits it.",
    )


class FineTuneJobSpec(CamelModel):
    """Desired state of a differentially private LoRA fine-tune on encrypted data."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {
                "rule": "!has(self.privacy) || !has(self.privacy.unit) || "
                "self.privacy.unit != 'user' || self.dataset.format != 'text'",
                "message": "privacy.unit 'user' needs a JSON dataset format (alpaca or sharegpt): "
                "text records carry no user field",
                "fieldPath": ".privacy.unit",
            }
        )
    )

    @model_validator(mode="after")
    def _user_unit_needs_json(self) -> FineTuneJobSpec:
        if self.privacy.unit == "user" and self.dataset.format == "text":
            raise ValueError(
                "privacy.unit 'user' needs a JSON dataset format (alpaca or sharegpt): "
                "text records carry no user field"
            )
        return self

    model: ModelSource = Field(
        description="Base model to fine-tune.", json_schema_extra=cel(immutable("model"))
    )
    dataset: DatasetSource = Field(
        description="Encrypted training data.", json_schema_extra=cel(immutable("dataset"))
    )
    pii: PiiConfig = Field(
        default_factory=PiiConfig, description="PII redaction before tokenization."
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig,
        description="LoRA/QLoRA hyper-parameters.",
        json_schema_extra=cel(
            immutable("training"),
        ),
    )
    privacy: PrivacyConfig = Field(
        default_factory=PrivacyConfig,
        description="Differential privacy budget and clipping.",
        json_schema_extra=cel(immutable("privacy")),
    )
    output: OutputSpec = Field(description="Where the encrypted adapter is written.")
    checkpoints: CheckpointSpec = Field(
        default_factory=CheckpointSpec, description="Encrypted checkpoint volume."
    )
    resources: ResourceSpec = Field(default_factory=ResourceSpec, description="Trainer compute.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Node placement, priority and Kueue queue."
    )
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Memorization audit.")
    pod_annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Extra annotations for the trainer pod (e.g. for a service mesh or "
        "autoscaler). They cannot weaken the pod's security settings.",
    )
    backoff_limit: int = Field(2, ge=0, le=10, description="Retries of the trainer pod on failure.")
    active_deadline_seconds: int | None = Field(
        None, ge=60, description="Wall-clock limit of the whole job, in seconds."
    )


# ---------------------------------------------------------------------------- status


class Condition(CamelModel):
    """A kubebuilder-style condition."""

    type: str = Field(description="Condition type, e.g. NetworkIsolated, Running, Succeeded.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = Field("", description="Human-readable explanation.")
    observed_generation: int = Field(0, description="metadata.generation this condition reflects.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")


class ProgressStatus(CamelModel):
    """Training progress."""

    step: int = Field(0, description="Optimizer steps done.")
    total_steps: int = Field(0, description="Optimizer steps planned.")
    percent: int = Field(0, description="step / totalSteps in percent.")
    epoch: float = Field(0.0, description="Epochs done (fractional).")


class PrivacyStatus(CamelModel):
    """The privacy guarantee actually spent."""

    dp_enabled: bool = Field(True, description="False when the job trained without DP.")
    epsilon_spent: float | None = Field(
        None, description="Epsilon spent (absent when DP is off: the guarantee is infinite)."
    )
    delta: float | None = Field(None, description="Delta of the guarantee.")
    noise_multiplier: float | None = Field(None, description="Gaussian noise multiplier used.")
    target_epsilon: float | None = Field(None, description="The budget the job was given.")
    accountant: str | None = Field(None, description="Privacy accountant (prv or rdp).")
    unit: str | None = Field(None, description="Privacy unit: record or user.")
    group_epsilon: dict[str, float] | None = Field(
        None,
        description="Epsilon for a group of k records (keys k = 2, 5, 10) by group privacy; "
        "relevant when one person has several records and the unit is `record`.",
    )
    ledger: list[LedgerEntry] | None = Field(
        None,
        description="Every statistic released by the trainer, with its mechanism and epsilon "
        "share (the privacy ledger).",
    )


class AuditStatus(CamelModel):
    """Memorization audit results."""

    verdict: Literal["passed", "failed"] | None = Field(None, description="passed or failed.")
    canary_exposure: float | None = Field(None, description="Mean canary exposure in bits.")
    epsilon_lower_bound: float | None = Field(
        None,
        description="One-run empirical epsilon lower bound at 95% (Steinke et al. 2023); the "
        "audit fails when it exceeds the accountant's epsilon.",
    )
    reasons: list[str] = Field(default_factory=list, description="Why the audit failed, if it did.")


class OutputStatus(CamelModel):
    """The encrypted adapter."""

    path: str | None = Field(
        None, description="Path of the encrypted adapter inside the output PVC."
    )
    sha256: str | None = Field(None, description="sha256 of the adapter ciphertext.")


class FineTuneJobStatus(CamelModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(extra="allow")

    phase: Literal["Pending", "Queued", "Running", "Succeeded", "Failed"] | None = Field(
        None, description="Pending, Queued, Running, Succeeded or Failed."
    )
    observed_generation: int | None = Field(
        None, description="Last metadata.generation acted upon."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Current conditions.")
    job_name: str | None = Field(None, description="Name of the batch/v1 Job running the trainer.")
    attempts: int | None = Field(
        None,
        description="Trainer pods started so far: 1, plus one per retry after a failed pod "
        "(e.g. an OOM kill); at most backoffLimit + 1.",
    )
    progress: ProgressStatus | None = Field(None, description="Training progress.")
    privacy: PrivacyStatus | None = Field(None, description="Privacy guarantee spent.")
    audit: AuditStatus | None = Field(None, description="Memorization audit results.")
    output: OutputStatus | None = Field(None, description="The encrypted adapter.")
    start_time: str | None = Field(None, description="When the trainer started.")
    completion_time: str | None = Field(None, description="When the trainer finished.")


class FineTuneJob(CamelModel):
    """A FineTuneJob as read from the API server (only the parts the operator uses)."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: dict[str, Any]
    spec: FineTuneJobSpec
