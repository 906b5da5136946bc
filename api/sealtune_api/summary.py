"""The trainer's summary: the one contract between the trainer pod and the operator.

The trainer writes it as compact JSON to its termination-message path (Kubernetes keeps
at most 4096 bytes); the operator parses it with `TrainerSummary.parse` and maps it to
the FineTuneJob's status. Nothing else crosses that boundary.

Privacy: every number here is either public by declaration (dataset size N, the sampling
rate q, steps T, the noise multiplier sigma, the clipping norm C, shapes, digests, the
audit's canary-only statistics, which are post-processing of the DP model and of canaries
that are not private data) or released through a DP mechanism whose cost is counted in
`privacy.ledger`. The raw training loss, exact PII redaction counts and a membership score
computed on private records are *not* part of the contract: each is a statistic of the
private data with no noise, and any one of them voids epsilon.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from pydantic import Field, ValidationError

from sealtune_api.base import CamelModel
from sealtune_api.exitcodes import ExitCode

__all__ = ["ExitCode", "LedgerEntry", "TrainerSummary"]

MAX_BYTES = 4096


class LedgerEntry(CamelModel):
    """One statistic that leaves the pod, with how it was made safe to release."""

    statistic: str = Field(description="What is released, e.g. `adapter`, `steps`.")
    mechanism: str = Field(description="`public` (by declaration) or the DP mechanism.")
    epsilon: float | None = Field(
        None, description="Share of the job's epsilon this release costs (None: public)."
    )


class SummaryPrivacy(CamelModel):
    """The guarantee of the released adapter and every other release."""

    dp_enabled: bool
    epsilon: float | None = Field(None, description="Total epsilon spent; None when infinite.")
    target_epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    max_grad_norm: float | None = None
    accountant: str | None = None
    unit: Literal["record", "user"] = "record"
    adjacency: Literal["add-remove", "replace-one"] = "add-remove"
    group_epsilon: dict[str, float] = Field(
        default_factory=dict, description="Epsilon for a group of k records (k = 2, 5, 10)."
    )
    ledger: list[LedgerEntry] = Field(default_factory=list)


class SummaryAudit(CamelModel):
    """The memorization audit, computed from canaries only (post-processing of the model)."""

    verdict: Literal["passed", "failed"]
    reasons: list[str] = Field(default_factory=list)
    canaries: int = 0
    canary_repetitions: int = 0
    canary_exposure: float | None = None
    canary_exposure_max: float | None = None
    max_possible_exposure: float | None = None
    max_canary_exposure: float | None = None
    epsilon_lower_bound: float | None = None
    membership_auc_calibrated: float | None = Field(
        None, description="AUC of the base-calibrated canary score (included vs excluded)."
    )
    tpr_at_fpr: dict[str, list[float]] | None = Field(
        None, description="FPR -> [TPR, 95% low, 95% high] of the calibrated canary score."
    )
    exposures: list[float] | None = None


class SummaryRecords(CamelModel):
    """Dataset sizes: public by declaration (N and the held-out share)."""

    train: int
    held_out: int


class SummaryAdapter(CamelModel):
    """The encrypted adapter: its path relative to the output volume, and its digest."""

    path: str
    sha256: str


class SummaryError(CamelModel):
    reason: str
    message: str = ""


class TrainerSummary(CamelModel):
    """What the trainer reports when it exits (success or failure)."""

    job: str
    phase: Literal["Succeeded", "Failed", "Stopped"]
    privacy: SummaryPrivacy | None = None
    steps: int | None = None
    total_steps: int | None = None
    epochs: int | None = None
    records: SummaryRecords | None = None
    noised_loss: list[float] | None = Field(
        None,
        description="The DP-noised training loss, one value per release (every "
        "`noisedLossInterval` steps); its cost is in the ledger. Never the raw loss.",
    )
    noised_loss_interval: int | None = None
    audit: SummaryAudit | None = None
    adapter: SummaryAdapter | None = None
    resumed_from_step: int | None = None
    seconds: float | None = None
    error: SummaryError | None = None

    @classmethod
    def failure(cls, job: str, reason: str, message: str) -> TrainerSummary:
        return cls(
            job=job, phase="Failed", error=SummaryError(reason=reason, message=message[:1000])
        )

    @classmethod
    def parse(cls, text: str) -> TrainerSummary | None:
        """The summary in a termination message, or None if it is not one (never raises)."""
        try:
            return cls.model_validate_json(text)
        except (ValidationError, ValueError):
            return None

    def to_message(self, limit: int = MAX_BYTES) -> str:
        """Compact JSON that fits `limit` bytes, shedding detail (exposures, reasons) first."""
        data = self.model_copy(deep=True)

        def dump() -> str:
            text = json.dumps(data.wire(), separators=(",", ":"), allow_nan=False)
            return text

        text = dump()
        if len(text.encode()) > limit and data.audit is not None:
            data.audit.exposures = None
            text = dump()
        if len(text.encode()) > limit and data.audit is not None:
            data.audit.reasons = [r[:120] for r in data.audit.reasons[:3]]
            text = dump()
        if len(text.encode()) > limit and data.noised_loss:
            data.noised_loss = data.noised_loss[-10:]
            text = dump()
        if len(text.encode()) > limit and data.privacy is not None:
            data.privacy.ledger = data.privacy.ledger[:4]
            data.privacy.group_epsilon = {}
            text = dump()
        for name in ("records", "resumed_from_step", "seconds"):
            if len(text.encode()) <= limit:
                break
            setattr(data, name, None)
            text = dump()
        if len(text.encode()) > limit and data.error is not None:
            data.error.message = data.error.message[:200]
            text = dump()
        return text


def finite(x: float | None, digits: int = 6) -> float | None:
    """A JSON-safe number: None for NaN and infinities (epsilon without DP is infinite)."""
    if x is None or math.isnan(x) or math.isinf(x):
        return None
    return round(float(x), digits)
