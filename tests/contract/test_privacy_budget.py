"""PrivacyBudget: the charge decision (pure) that the operator applies before a job starts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sealtune_api.privacybudget import (
    BudgetCharge,
    PrivacyBudgetSpec,
    PrivacyBudgetStatus,
    charge_decision,
)

SPEC = PrivacyBudgetSpec(dataset_sha256="a" * 64, epsilon=10.0, delta=1e-5)


def _charged(*eps: float) -> PrivacyBudgetStatus:
    return PrivacyBudgetStatus(
        charges=[
            BudgetCharge(job=f"j{i}", uid=f"u{i}", epsilon=e, delta=1e-6, at="2026-01-01T00:00:00Z")
            for i, e in enumerate(eps)
        ]
    )


def test_jobs_are_admitted_until_the_budget_is_spent() -> None:
    ok, msg = charge_decision(SPEC, _charged(), "new", 8.0, 1e-6)
    assert ok and "2 left" in msg
    ok, msg = charge_decision(SPEC, _charged(8.0), "new", 2.0, 1e-6)
    assert ok
    ok, msg = charge_decision(SPEC, _charged(8.0), "new", 3.0, 1e-6)
    assert not ok
    assert "epsilon 2 and delta" in msg and "asks epsilon 3" in msg and "lower" in msg


def test_delta_is_budgeted_too_and_a_job_is_charged_once() -> None:
    ok, _ = charge_decision(SPEC, _charged(*[0.1] * 9), "new", 0.1, 2e-6)
    assert not ok  # 9e-6 spent, 2e-6 asked, 1e-5 granted
    assert charge_decision(SPEC, _charged(8.0), "u0", 8.0, 1e-6) == (True, "already charged")


def test_spec_is_validated() -> None:
    with pytest.raises(ValidationError):
        PrivacyBudgetSpec(dataset_sha256="not-a-digest", epsilon=1.0)
    with pytest.raises(ValidationError):
        PrivacyBudgetSpec(dataset_sha256="a" * 64, epsilon=0.0)
