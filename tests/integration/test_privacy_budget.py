"""A PrivacyBudget caps the epsilon all FineTuneJobs on one dataset spend, enforced by the
operator against the real API server before any child is created."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.integration.conftest import (
    Namespace,
    OperatorProcess,
    condition,
    ftj_manifest,
    status_of,
    wait_for,
)

pytestmark = pytest.mark.integration

DIGEST = "ab" * 32


def _budget(epsilon: float) -> dict[str, Any]:
    return {
        "apiVersion": "sealtune.io/v1alpha1",
        "kind": "PrivacyBudget",
        "metadata": {"name": "clinical-notes"},
        "spec": {"datasetSha256": DIGEST, "epsilon": epsilon, "delta": 1e-4},
    }


def _job(name: str, epsilon: float, digest: str | None = DIGEST) -> dict[str, Any]:
    dataset: dict[str, Any] = {"sha256": digest} if digest else {}
    return ftj_manifest(name, dataset=dataset, privacy={"targetEpsilon": epsilon, "delta": 1e-5})


def test_jobs_beyond_the_dataset_budget_never_start(
    namespace: Namespace, operator: OperatorProcess
) -> None:
    ns = namespace
    ns.prerequisites_for_example()
    for name in ("first", "second", "unpinned"):
        ns.pv_for(f"{name}-checkpoints")
    ns.apply(_budget(10.0))
    ns.apply(_job("first", 8.0))
    wait_for(lambda: ns.get_or_none("job", "first-trainer"), what="first job admitted")
    ns.apply(_job("second", 4.0))
    st = wait_for(
        lambda: (
            condition(status_of(ns, "finetunejob", "second"), "ResourcesReady").get("reason")
            == "BudgetExceeded"
            and status_of(ns, "finetunejob", "second")
        ),
        what="second job refused",
    )
    message = condition(st, "ResourcesReady")["message"]
    assert "epsilon 2 " in message and "asks epsilon 4" in message
    assert ns.get_or_none("networkpolicy", "second-isolation") is None
    assert ns.get_or_none("job", "second-trainer") is None
    budget = ns.get("privacybudget", "clinical-notes")["status"]
    assert [c["job"] for c in budget["charges"]] == ["first"]
    assert budget["spentEpsilon"] == 8.0 and budget["remainingEpsilon"] == 2.0
    # a job that cannot be matched to its dataset is refused in a budgeted namespace
    ns.apply(_job("unpinned", 1.0, digest=None))
    wait_for(
        lambda: (
            condition(status_of(ns, "finetunejob", "unpinned"), "ResourcesReady").get("reason")
            == "BudgetUnmatched"
        ),
        what="unpinned job refused",
    )
    assert ns.get_or_none("job", "unpinned-trainer") is None


def test_budget_spec_is_validated_by_the_api_server(namespace: Namespace) -> None:
    bad = {**_budget(0.0), "metadata": {"name": "bad", "namespace": namespace.name}}
    proc = namespace.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0 and "epsilon must be greater than 0" in proc.stderr
