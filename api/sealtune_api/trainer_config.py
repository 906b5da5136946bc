"""The trainer's configuration: one pydantic model shared by the trainer and the operator.

Part of `sealtune_api` (pydantic only): the operator embeds `TrainingConfig`,
`PrivacyConfig`, `PiiConfig` and `AuditConfig` into the FineTuneJob CRD schema and
renders a `TrainerConfig` into the trainer's ConfigMap. Field names are camelCase on the
wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

from pydantic import ConfigDict, Field, model_validator

from sealtune_api.base import CamelModel

if TYPE_CHECKING:
    from sealtune_api.finetunejob import FineTuneJob

PiiEntity = Literal["EMAIL", "PHONE", "CN_ID", "BANK_CARD", "IBAN", "IP_ADDRESS", "US_SSN"]
PII_ENTITIES: tuple[PiiEntity, ...] = get_args(PiiEntity)


class TrainingConfig(CamelModel):
    """Hyper-parameters of the LoRA/QLoRA fine-tune."""

    method: Literal["lora", "qlora"] = Field(
        "lora",
        description="Adapter method: `lora` (bf16/fp32 base) or `qlora` (4-bit base, needs a GPU).",
    )
    rank: int = Field(16, ge=1, le=256, description="LoRA rank r (1..256).")
    alpha: float = Field(
        32.0, gt=0, description="LoRA scaling alpha; the update is scaled by alpha/rank."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch (0 <= p < 1).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        min_length=1,
        description="Names of the linear modules that receive LoRA adapters (e.g. q_proj, v_proj).",
    )
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the dataset.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate of AdamW.")
    batch_size: int = Field(
        16,
        ge=1,
        le=65536,
        description="Logical batch size: the expected number of samples per optimizer step "
        "(with differential privacy, the Poisson sampling rate is batchSize / dataset size).",
    )
    micro_batch_size: int = Field(
        4,
        ge=1,
        le=4096,
        description="Physical batch that fits in accelerator memory; larger logical batches are "
        "accumulated as virtual batches.",
    )
    max_seq_length: int = Field(
        512, ge=8, le=131072, description="Tokens per sample after truncation."
    )
    seed: int = Field(
        42,
        ge=0,
        le=2**31 - 1,
        description="Seed for public choices only (LoRA initialisation, non-DP data order). "
        "DP sampling, noise, the held-out split and canaries use a per-job secret.",
    )


class PrivacyConfig(CamelModel):
    """Differential privacy (DP-SGD) settings."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.targetEpsilon > 0.0",
                    "message": "privacy.targetEpsilon must be greater than 0",
                    "fieldPath": ".targetEpsilon",
                },
                {
                    "rule": "self.delta > 0.0 && self.delta < 1.0",
                    "message": "privacy.delta must be between 0 and 1 (exclusive)",
                    "fieldPath": ".delta",
                },
                {
                    "rule": "self.unit != 'user' || has(self.userField)",
                    "message": "privacy.unit 'user' needs privacy.userField (e.g. patient_id)",
                    "fieldPath": ".userField",
                },
            ]
        }
    )

    enabled: bool = Field(
        True,
        description="Train with DP-SGD. When false the model trains normally and the reported "
        "epsilon is infinite.",
    )
    target_epsilon: float = Field(
        8.0, description="Privacy budget epsilon to spend over the whole run; must be > 0."
    )
    delta: float = Field(
        1e-5, description="Privacy parameter delta, 0 < delta < 1; choose below 1/dataset size."
    )
    max_grad_norm: float = Field(
        0.1,
        gt=0,
        description="Per-sample gradient clipping norm C (> 0). The default fits LoRA: "
        "per-sample LoRA gradient norms sit well below 1, so C=1 clips nothing and "
        "calibrates the noise to a sensitivity the gradients never reach.",
    )
    accountant: Literal["prv", "rdp"] = Field(
        "prv", description="Privacy accountant: `prv` (tight, default) or `rdp`."
    )
    release_loss: bool = Field(
        True,
        description="Release a DP-noised training loss every lossReleaseInterval steps (status, "
        "metrics, logs): per-sample losses clipped to lossClip, summed, plus Gaussian noise; "
        "its cost is a declared share (lossBudgetShare) of targetEpsilon. The raw loss never "
        "leaves the trainer.",
    )
    loss_release_interval: int = Field(
        10, ge=1, le=100000, description="Optimizer steps between two noised loss releases."
    )
    loss_clip: float = Field(
        8.0, gt=0, le=100, description="Per-sample (per-user) loss bound: the sensitivity."
    )
    loss_budget_share: float = Field(
        0.05, gt=0, lt=0.5, description="Share of targetEpsilon spent on loss releases."
    )
    unit: Literal["record", "user"] = Field(
        "record",
        description="The privacy unit. `record`: epsilon protects one record (a patient with k "
        "records gets group epsilon ~k*epsilon). `user`: epsilon protects everything of one "
        "user (e.g. a patient): users are Poisson-sampled, the sum of a user's per-record "
        "gradients is clipped, and the accountant counts users.",
    )
    user_field: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="With unit `user`: the field of each JSON record that identifies its user "
        "(e.g. patient_id). Not available for format `text`.",
    )
    max_records_per_user: int = Field(
        8,
        ge=1,
        le=1024,
        description="With unit `user`: at most this many records of one user are trained on "
        "(chosen by a keyed hash); the rest are left out.",
    )

    @model_validator(mode="after")
    def _check_budget(self) -> PrivacyConfig:
        # Mirrors the CRD's CEL rules for configs that never pass the API server.
        if not self.target_epsilon > 0:
            raise ValueError("privacy.targetEpsilon must be greater than 0")
        if not 0 < self.delta < 1:
            raise ValueError("privacy.delta must be between 0 and 1 (exclusive)")
        if self.unit == "user" and not self.user_field:
            raise ValueError("privacy.unit 'user' needs privacy.userField (e.g. patient_id)")
        return self


class PiiConfig(CamelModel):
    """PII redaction applied to every record before tokenization."""

    enabled: bool = Field(True, description="Redact PII before tokenization.")
    entities: list[PiiEntity] = Field(
        default_factory=lambda: list(PII_ENTITIES),
        description="Entity types to redact: EMAIL, PHONE, CN_ID, BANK_CARD, IBAN, IP_ADDRESS, "
        "US_SSN.",
    )
    mode: Literal["mask", "pseudonymize"] = Field(
        "mask",
        description="`mask` replaces a value with its type (`[PHONE]`); `pseudonymize` "
        "with a keyed HMAC token that is stable within one job.",
    )


class AuditConfig(CamelModel):
    """Memorization audit run after training."""

    canaries: int = Field(
        0,
        ge=0,
        le=1000,
        description="Random secret canaries inserted into the training data (0: none).",
    )
    canary_repetitions: int = Field(
        1, ge=1, le=1000, description="How many times each canary is inserted."
    )
    max_canary_exposure: float = Field(
        8.0, gt=0, description="Fail the audit when the mean canary exposure (bits) exceeds this."
    )
    membership_auc_threshold: float = Field(
        0.6,
        ge=0.5,
        le=1,
        description="Deprecated and ignored: a membership score computed on private held-out "
        "records is an un-noised statistic of the data, so the job no longer computes or "
        "releases it; the audit uses canaries and the one-run epsilon lower bound instead.",
    )
    held_out_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of records held out as non-members for the audit."
    )


class DatasetFiles(CamelModel):
    """Where the trainer finds its (encrypted) dataset inside the pod or on a laptop."""

    path: str = Field(description="Path of the encrypted dataset file.")
    format: Literal["alpaca", "sharegpt", "text"] = Field(description="Record format.")
    key_file: str = Field(description="File holding the 32-byte data key (raw or base64).")
    sha256: str | None = Field(
        None, description="Expected sha256 of the encrypted file (spec.dataset.sha256)."
    )


class TrainerConfig(CamelModel):
    """Everything the trainer process needs; the operator writes it as JSON into a ConfigMap."""

    job_name: str = Field(description="Name of the FineTuneJob (used in key ids and reports).")
    job_uid: str = Field("", description="UID of the FineTuneJob, binds checkpoints to one job.")
    model_dir: str = Field(description="Directory of the base model (safetensors + tokenizer).")
    model_manifest_sha256: str | None = Field(
        None, description="Expected sha256 of the model's SHA256SUMS manifest, if pinned."
    )
    dataset: DatasetFiles
    output_dir: str = Field(description="Directory that receives the encrypted adapter.")
    output_key_file: str = Field(description="File holding the output key.")
    output_subpath: str = Field(
        "",
        description="`spec.output.pvc.path`: the adapter's path in status is relative to "
        "the output volume, as documented, not the in-pod mount path.",
    )
    checkpoint_dir: str = Field(description="Directory for encrypted checkpoints.")
    checkpoint_key_file: str = Field(description="File holding the per-job checkpoint key.")
    checkpoint_interval_steps: int = Field(50, ge=1)
    scratch_dir: str = Field("/scratch", description="Memory-backed scratch directory.")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus port (0: off).")
    termination_message_path: str = Field("/dev/termination-log")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @classmethod
    def from_job(cls, job: FineTuneJob, mounts: Mounts) -> TrainerConfig:
        """The trainer's view of `job` with its volumes at `mounts`."""
        return trainer_config_from_job(job, mounts)


class Mounts(CamelModel):
    """Where a job's volumes and Secrets appear to the trainer process.

    In a pod these are the operator's fixed mount points (`/models`, `/data`, ...); for
    `sealtune train` on a laptop they are local directories that mirror them. Spec paths
    inside a volume (`spec.dataset.pvc.path`, ...) are joined onto these roots.
    """

    model: str = Field(description="Root of the base-model volume.")
    dataset: str = Field(description="Root of the dataset volume.")
    dataset_key_file: str = Field(description="The dataset key, as mounted.")
    output: str = Field(description="Root of the output volume.")
    output_key_file: str = Field(description="The output key, as mounted.")
    checkpoints: str = Field(description="The per-job checkpoint volume.")
    checkpoint_key_file: str = Field(description="The per-job checkpoint key, as mounted.")
    scratch: str = Field(description="Memory-backed scratch directory.")
    termination_message_path: str = Field(description="Where the summary is written.")
    metrics_port: int = Field(9090, ge=0, le=65535, description="Prometheus port (0: off).")


def _join(root: str, path: str) -> str:
    return f"{root.rstrip('/')}/{path}".rstrip("/") if path else root


def trainer_config_from_job(job: FineTuneJob, mounts: Mounts) -> TrainerConfig:
    """The one FineTuneJob -> TrainerConfig mapping (operator render and `sealtune train`)."""
    spec = job.spec
    meta = job.metadata
    if spec.model.pvc is not None:
        model_path = spec.model.pvc.path
    else:
        assert spec.model.image is not None  # ModelSource validates exactly one
        model_path = spec.model.image.path
    return TrainerConfig(
        job_name=str(meta.get("name", "")),
        job_uid=str(meta.get("uid", "") or ""),
        model_dir=_join(mounts.model, model_path),
        model_manifest_sha256=spec.model.manifest_sha256,
        dataset=DatasetFiles(
            path=_join(mounts.dataset, spec.dataset.pvc.path),
            format=spec.dataset.format,
            key_file=mounts.dataset_key_file,
            sha256=spec.dataset.sha256,
        ),
        output_dir=_join(mounts.output, spec.output.pvc.path),
        output_key_file=mounts.output_key_file,
        output_subpath=spec.output.pvc.path,
        checkpoint_dir=mounts.checkpoints,
        checkpoint_key_file=mounts.checkpoint_key_file,
        checkpoint_interval_steps=spec.checkpoints.interval_steps,
        scratch_dir=mounts.scratch,
        metrics_port=mounts.metrics_port,
        termination_message_path=mounts.termination_message_path,
        training=spec.training,
        privacy=spec.privacy,
        pii=spec.pii,
        audit=spec.audit,
    )
