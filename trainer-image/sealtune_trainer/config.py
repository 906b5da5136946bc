"""The trainer's configuration: one pydantic model shared by the trainer and the operator.

This module must stay light (no torch, no transformers): the operator imports it to
embed `TrainingConfig`, `PrivacyConfig`, `PiiConfig` and `AuditConfig` into the
FineTuneJob CRD schema, and renders a `TrainerConfig` into the trainer's ConfigMap.
Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

PiiEntity = Literal["EMAIL", "PHONE", "CN_ID", "BANK_CARD", "IBAN", "IP_ADDRESS", "US_SSN"]
PII_ENTITIES: tuple[PiiEntity, ...] = get_args(PiiEntity)


class CamelModel(BaseModel):
    """Base for every spec model: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes and in config JSON (camelCase, no Nones)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


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
        42, ge=0, le=2**31 - 1, description="Seed for initialisation, sampling and noise."
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
        1.0, gt=0, description="Per-sample gradient clipping norm C (> 0)."
    )
    accountant: Literal["prv", "rdp"] = Field(
        "prv", description="Privacy accountant: `prv` (tight, default) or `rdp`."
    )

    @model_validator(mode="after")
    def _check_budget(self) -> PrivacyConfig:
        # Mirrors the CRD's CEL rules for configs that never pass the API server.
        if not self.target_epsilon > 0:
            raise ValueError("privacy.targetEpsilon must be greater than 0")
        if not 0 < self.delta < 1:
            raise ValueError("privacy.delta must be between 0 and 1 (exclusive)")
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
        description="Fail the audit when the loss-threshold membership-inference ROC AUC exceeds "
        "this.",
    )
    held_out_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of records held out as non-members for the audit."
    )


class DatasetFiles(CamelModel):
    """Where the trainer finds its (encrypted) dataset inside the pod or on a laptop."""

    path: str = Field(description="Path of the encrypted dataset file.")
    format: Literal["alpaca", "sharegpt", "text"] = Field(description="Record format.")
    key_file: str = Field(description="File holding the 32-byte data key (raw or base64).")


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
