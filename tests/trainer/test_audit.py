"""Memorization audit: AUC/exposure arithmetic, and the direction test (overfit non-DP
model scores worse than the DP model on the same data, and fails the audit)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tests.trainer.trainerkit import make_job

from sealtune_trainer.audit import CANDIDATES, roc_auc
from sealtune_trainer.job import run_job

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
AUDIT = {
    "canaries": 2,
    "canaryRepetitions": 4,
    "heldOutFraction": 0.25,
    "maxCanaryExposure": 4.0,
    "membershipAucThreshold": 0.65,
}


def test_roc_auc_known_values() -> None:
    assert roc_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert roc_auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0.2, 0.3]) == pytest.approx(6 / 8)
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def test_exposure_range() -> None:
    assert math.log2(CANDIDATES + 1) == 10.0  # rank 1 of 1024 gives the maximum, 10 bits


@pytest.fixture(scope="module")
def audits(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = {}
    overfit = make_job(
        tmp_path_factory.mktemp("overfit"),
        tiny_model,
        n_records=40,
        training={
            "epochs": 15,
            "learningRate": 0.05,
            "batchSize": 8,
            "rank": 8,
            "targetModules": MODULES,
        },
        privacy={"enabled": False},
        audit=AUDIT,
    )
    out["overfit"] = run_job(overfit, device="cpu").summary
    private = make_job(
        tmp_path_factory.mktemp("dp"),
        tiny_model,
        n_records=40,
        training={
            "epochs": 3,
            "learningRate": 0.02,
            "batchSize": 8,
            "rank": 8,
            "targetModules": MODULES,
        },
        privacy={"enabled": True, "targetEpsilon": 1.0},
        audit=AUDIT,
    )
    out["dp"] = run_job(private, device="cpu").summary
    return out


def test_overfit_model_leaks_more_than_dp_model(audits: dict[str, dict]) -> None:
    over, dp = audits["overfit"]["audit"], audits["dp"]["audit"]
    assert over["membershipAuc"] > dp["membershipAuc"]
    assert over["canaryExposure"] > dp["canaryExposure"]
    assert over["canaryExposure"] > 4.0  # it really memorized the canaries
    assert all(0.0 <= e <= 10.0 for e in over["exposures"] + dp["exposures"])


def test_verdicts_follow_thresholds(audits: dict[str, dict]) -> None:
    over, dp = audits["overfit"]["audit"], audits["dp"]["audit"]
    assert over["verdict"] == "failed"
    assert any("exposure" in r for r in over["reasons"])
    assert dp["verdict"] == "passed" and dp["reasons"] == []
    # a failed audit still leaves only an encrypted adapter, and reports it
    assert audits["overfit"]["adapter"]["sha256"]
