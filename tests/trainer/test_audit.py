"""Memorization audit: exposure arithmetic, the one-run epsilon lower bound, and the
direction test on a model that learns: an over-trained non-DP run is flagged (canaries
memorized), a DP run passes and its lower bound stays below its epsilon."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from tests.trainer.trainerkit import make_job

from sealtune_api.trainer_config import TrainerConfig
from sealtune_trainer.audit import CANDIDATES, one_run_epsilon_lower_bound, roc_auc
from sealtune_trainer.job import run_job

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
AUDIT = {"canaries": 1, "canaryRepetitions": 16, "heldOutFraction": 0.25, "maxCanaryExposure": 8.0}
DP_EPSILON = 0.5


def test_roc_auc_known_values() -> None:
    assert roc_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert roc_auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert roc_auc([1, 1], [1, 1]) == 0.5
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0.2, 0.3]) == pytest.approx(6 / 8)
    with pytest.raises(ValueError):
        roc_auc([], [1.0])


def test_exposure_range() -> None:
    assert math.log2(CANDIDATES + 1) == 10.0  # rank 1 of 1024 gives the maximum, 10 bits


def test_lower_bound_grows_with_perfect_guesses_and_vanishes_for_chance() -> None:
    rng = random.Random(0)
    included = [rng.random() < 0.5 for _ in range(1000)]
    perfect = [1.0 if inc else 0.0 for inc in included]
    eps, r, correct = one_run_epsilon_lower_bound(perfect, included)
    assert r == 500 and correct == 500 and eps > 4.0
    chance = [rng.random() for _ in included]
    assert one_run_epsilon_lower_bound(chance, included)[0] < 0.3
    # more evidence, a higher bound
    assert one_run_epsilon_lower_bound(perfect[:40], included[:40])[0] < eps


def _fix_job_key(cfg: TrainerConfig) -> None:
    """The canary's secret comes from the job key; this tiny model memorizes a canary only
    partly and how much depends on the secret, so a fixed key keeps the test deterministic
    (as the public seed did before the randomness became secret)."""
    key = Path(cfg.checkpoint_key_file)
    key.chmod(0o600)
    key.write_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def audits(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out: dict[str, object] = {}
    root = tmp_path_factory.mktemp("overfit")
    overfit = make_job(
        root,
        tiny_model,
        n_records=40,
        training={
            "epochs": 20,
            "learningRate": 0.05,
            "batchSize": 8,
            "rank": 8,
            "targetModules": MODULES,
        },
        privacy={"enabled": False},
        audit=AUDIT,
    )
    _fix_job_key(overfit)
    res = run_job(overfit, device="cpu")
    out["overfit"] = res.summary
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
        privacy={"enabled": True, "targetEpsilon": DP_EPSILON},
        audit=AUDIT,
    )
    _fix_job_key(private)
    out["dp"] = run_job(private, device="cpu").summary
    return out


def test_overfit_model_is_flagged_and_dp_model_passes(audits: dict) -> None:
    over, dp = audits["overfit"].audit, audits["dp"].audit
    assert over.canary_exposure > 8.0 > dp.canary_exposure  # it really memorized it
    assert over.verdict == "failed" and any("exposure" in r for r in over.reasons)
    # 1 canary: too few for the one-run bound (needs >= 16), so it is not reported
    assert dp.epsilon_lower_bound is None and over.epsilon_lower_bound is None
    assert dp.verdict == "passed" and dp.reasons == []
    assert all(0.0 <= e <= 10.0 for e in (over.exposures or []) + (dp.exposures or []))
    # a failed audit still leaves only an encrypted adapter, and reports it
    assert audits["overfit"].adapter.sha256


def test_tpr_at_low_fpr_with_intervals() -> None:
    from sealtune_trainer.audit import tpr_at_fpr

    non = [i / 1000 for i in range(1000)]  # uniform non-member scores
    perfect = [2.0] * 50
    tpr, lo, hi = tpr_at_fpr(perfect, non, 0.01)
    assert tpr == 1.0 and lo > 0.9 and hi == 1.0
    chance = [i / 50 for i in range(50)]
    tpr, lo, hi = tpr_at_fpr(chance, non, 0.01)
    assert tpr <= 0.04 and lo == 0.0 and hi < 0.2
