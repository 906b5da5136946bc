"""The PrivacyBudget custom resource: one epsilon budget per dataset, across jobs.

Every fine-tune on a dataset spends some of its privacy; run ten jobs at epsilon 8 and the
records are protected at epsilon 80 at best. A platform team caps that with a
PrivacyBudget: the operator charges each FineTuneJob whose `spec.dataset.sha256` matches
its `datasetSha256` with the job's `privacy.targetEpsilon` (and delta) *before* the job
starts, and refuses a job that would exceed the budget with a readable reason. Charges are
never refunded (a deleted job's adapter may still exist); composition is basic (epsilons
and deltas add), which is conservative. In a namespace with a PrivacyBudget, a job
without `spec.dataset.sha256` is refused too: it could not be charged.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field, model_validator

from sealtune_api.base import CamelModel, cel
from sealtune_api.finetunejob import Condition


class PrivacyBudgetSpec(CamelModel):
    """The budget a platform team grants one dataset."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            {"rule": "self.epsilon > 0.0", "message": "epsilon must be greater than 0"},
            {
                "rule": "self.delta > 0.0 && self.delta < 1.0",
                "message": "delta must be between 0 and 1 (exclusive)",
            },
        )
    )

    dataset_sha256: str = Field(
        pattern=r"^[a-f0-9]{64}$",
        description="sha256 of the encrypted dataset file the budget governs (FineTuneJobs "
        "with this spec.dataset.sha256 are charged to it).",
    )
    epsilon: float = Field(description="Total epsilon all jobs on the dataset may spend.")
    delta: float = Field(1e-5, description="Total delta all jobs on the dataset may spend.")

    @model_validator(mode="after")
    def _positive(self) -> PrivacyBudgetSpec:
        # Mirrors the CEL rules for objects that never pass the API server.
        if not self.epsilon > 0 or not 0 < self.delta < 1:
            raise ValueError("epsilon must be > 0 and delta between 0 and 1 (exclusive)")
        return self


class BudgetCharge(CamelModel):
    """One job's charge, recorded when the job was admitted."""

    job: str = Field(description="FineTuneJob name.")
    uid: str = Field(description="FineTuneJob UID (a re-created job is a new charge).")
    epsilon: float
    delta: float
    at: str = Field(description="When the charge was made (RFC 3339).")


class PrivacyBudgetStatus(CamelModel):
    """What has been spent, written only by the operator."""

    model_config = ConfigDict(extra="allow")

    spent_epsilon: float = Field(0.0, description="Sum of the charged epsilons.")
    spent_delta: float = Field(0.0, description="Sum of the charged deltas.")
    remaining_epsilon: float | None = Field(None, description="epsilon - spentEpsilon.")
    charges: list[BudgetCharge] = Field(default_factory=list, description="Admitted jobs.")
    conditions: list[Condition] = Field(default_factory=list)


def charge_decision(
    spec: PrivacyBudgetSpec,
    status: PrivacyBudgetStatus,
    uid: str,
    epsilon: float,
    delta: float,
) -> tuple[bool, str]:
    """Admit (True) or refuse (False) a job's charge, with a message that says what to fix.

    Pure: the operator calls it under its per-budget lock and then records the charge.
    """
    if any(c.uid == uid for c in status.charges):
        return True, "already charged"
    spent_e = sum(c.epsilon for c in status.charges)
    spent_d = sum(c.delta for c in status.charges)
    left_e = spec.epsilon - spent_e
    left_d = spec.delta - spent_d
    if epsilon > left_e + 1e-12 or delta > left_d + 1e-18:
        return False, (
            f"the dataset's privacy budget (epsilon {spec.epsilon:g}, delta {spec.delta:g}) has "
            f"epsilon {max(left_e, 0):g} and delta {max(left_d, 0):g} left after "
            f"{len(status.charges)} job(s); this job asks epsilon {epsilon:g}, delta {delta:g}: "
            "lower privacy.targetEpsilon/delta or ask the platform team to raise the budget"
        )
    return True, f"charged epsilon {epsilon:g}; {left_e - epsilon:g} left"
