"""Charge a FineTuneJob to its dataset's PrivacyBudget before any child is created.

The decision is `sealtune_api.privacybudget.charge_decision` (pure); this module reads the
namespace's PrivacyBudgets and records the charge in the budget's status with optimistic
concurrency (a merge patch carrying `resourceVersion`: a concurrent charge makes it fail
with 409 and we re-read), so two jobs can never both take the last of a budget.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from sealtune_api.finetunejob import FineTuneJobSpec
from sealtune_api.privacybudget import (
    BudgetCharge,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
    charge_decision,
)
from sealtune_operator.common import kube

PLURAL = "privacybudgets"
ATTEMPTS = 5


def charge(namespace: str, name: str, uid: str, spec: FineTuneJobSpec) -> tuple[str, str] | None:
    """(reason, message) when the job must not start; None when it may (and is charged)."""
    budgets = kube.list_custom(PLURAL, namespace)
    if not budgets:
        return None
    digest = spec.dataset.sha256
    if digest is None:
        return (
            "BudgetUnmatched",
            "this namespace has a PrivacyBudget: set spec.dataset.sha256 (the sha256 of the "
            "encrypted dataset file) so the job can be charged to its dataset's budget",
        )
    matching = [b for b in budgets if (b.get("spec") or {}).get("datasetSha256") == digest]
    if not matching:
        return None
    if not spec.privacy.enabled:
        return (
            "BudgetExceeded",
            "the dataset has a PrivacyBudget and privacy.enabled is false (epsilon is infinite)",
        )
    for budget in matching:
        refused = _charge_one(namespace, budget, name, uid, spec)
        if refused:
            return "BudgetExceeded", f"PrivacyBudget {budget['metadata']['name']}: {refused}"
    return None


def _charge_one(
    namespace: str, budget: dict[str, Any], job: str, uid: str, spec: FineTuneJobSpec
) -> str | None:
    eps, delta = spec.privacy.target_epsilon, spec.privacy.delta
    for _ in range(ATTEMPTS):
        bspec = PrivacyBudgetSpec.model_validate(budget["spec"])
        status = PrivacyBudgetStatus.model_validate(budget.get("status") or {})
        ok, message = charge_decision(bspec, status, uid, eps, delta)
        if not ok:
            return message
        if message == "already charged":
            return None
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status.charges.append(BudgetCharge(job=job, uid=uid, epsilon=eps, delta=delta, at=at))
        status.spent_epsilon = math.fsum(c.epsilon for c in status.charges)
        status.spent_delta = math.fsum(c.delta for c in status.charges)
        status.remaining_epsilon = bspec.epsilon - status.spent_epsilon
        meta = budget["metadata"]
        if kube.patch_status_if_unchanged(
            PLURAL, namespace, meta["name"], meta["resourceVersion"], status.wire()
        ):
            return None
        fresh = kube.get_custom(PLURAL, namespace, budget["metadata"]["name"])
        if fresh is None:
            return None  # the budget was deleted meanwhile: nothing to charge
        budget = fresh
    return "the budget is being charged by other jobs; retrying later"
