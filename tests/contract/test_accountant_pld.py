"""The trainer's epsilon, checked by an independent accountant: Google's `dp-accounting` PLD.

The trainer reports epsilon through Opacus' PRV accountant (`dp.make_accountant("prv")`,
history `[(sigma, q, T)]` as Opacus' optimizer hook appends it, `dp.epsilon_of`). Here the
same mechanism, T compositions of a Poisson-subsampled Gaussian (sample rate q, noise
multiplier sigma in units of the clipping norm C), is accounted a second time with the
privacy-loss-distribution accountant of `dp_accounting`, add/remove adjacency, and a fine
value discretization. The two are different algorithms from different codebases; a
wrong sample rate, step count or noise scale in the trainer's path would show up as a gap.

Tolerance: 1% relative, or Opacus' declared absolute error, whichever is larger. Opacus
returns an *upper bound*, its estimate plus `eps_error` (0.01, the default that
`dp.epsilon_of` uses), so below epsilon ~1 that fixed 0.01 exceeds 1% of epsilon; the
reported epsilon must never be below the PLD value (it is a bound, not an estimate).

User-level settings: with `privacy.unit: user` a user is the sampling unit (q = expected
users per batch / number of users, from the trainer's own `make_plan`) and the sum of a
user's per-record gradients is clipped to C, so the per-user sensitivity is C and the
DP event is the same subsampled Gaussian over users.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from opacus.accountants import PRVAccountant

from sealtune_api.trainer_config import PrivacyConfig, TrainingConfig
from sealtune_trainer import dp
from sealtune_trainer.training import make_plan

REL_TOL = 0.01
# The additive error Opacus adds to its estimate to return an upper bound (dp.epsilon_of
# calls get_epsilon without eps_error, so this default applies).
PRV_EPS_ERROR = float(inspect.signature(PRVAccountant.get_epsilon).parameters["eps_error"].default)
PLD_INTERVAL = 1e-4  # value discretization interval of the PLD (smaller: tighter, slower)


@dataclass(frozen=True)
class Setting:
    name: str
    q: float
    sigma: float
    steps: int
    delta: float


def user_level(
    name: str, users: int, batch: int, epochs: int, sigma: float, delta: float
) -> Setting:
    """q and T exactly as the trainer derives them when users are the privacy unit."""
    plan = make_plan(
        users,
        TrainingConfig(batch_size=batch, epochs=epochs),
        PrivacyConfig(enabled=False, unit="user", user_field="patient_id"),
    )
    return Setting(name, plan.sample_rate, sigma, plan.total_steps, delta)


SETTINGS = [
    Setting("tiny-q-10k-steps-eps0.6", q=0.001, sigma=1.0, steps=10_000, delta=1e-6),
    Setting("small-q-eps0.5", q=0.01, sigma=1.9, steps=500, delta=1e-5),
    Setting("small-q-5k-steps-eps3.7", q=0.004, sigma=0.7, steps=5_000, delta=1e-5),
    Setting("q0.01-1k-steps-eps2.3", q=0.01, sigma=0.9, steps=1_000, delta=1e-5),
    Setting("q0.1-eps5", q=0.1, sigma=1.2, steps=100, delta=1e-5),
    Setting("q0.1-eps10", q=0.1, sigma=1.0, steps=200, delta=1e-5),
    Setting("large-q-few-steps", q=0.5, sigma=3.0, steps=20, delta=1e-5),
    Setting("full-batch-10-steps", q=1.0, sigma=5.0, steps=10, delta=1e-5),
    user_level("user-2000-patients-b32", users=2000, batch=32, epochs=3, sigma=1.0, delta=1e-6),
    user_level("user-500-patients-b25", users=500, batch=25, epochs=10, sigma=1.5, delta=1e-5),
]


def pld_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    accountant = PLDAccountant(
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        value_discretization_interval=PLD_INTERVAL,
    )
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    accountant.compose(dp_event.SelfComposedDpEvent(event, steps))
    return float(accountant.get_epsilon(delta))


def trainer_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    accountant = dp.make_accountant("prv")
    accountant.history = [(sigma, q, steps)]  # what Opacus' DPOptimizer hook records
    return dp.epsilon_of(accountant, delta)


def agrees(reported: float, reference: float) -> bool:
    return abs(reported - reference) <= max(REL_TOL * reference, PRV_EPS_ERROR + 1e-3)


def test_settings_cover_the_range() -> None:
    qs = [s.q for s in SETTINGS]
    steps = [s.steps for s in SETTINGS]
    assert len(SETTINGS) >= 8
    assert min(qs) <= 0.001 and max(qs) >= 0.5
    assert min(steps) <= 10 and max(steps) >= 10_000
    assert sum(s.name.startswith("user-") for s in SETTINGS) >= 2


@pytest.fixture(scope="module")
def epsilons() -> dict[str, tuple[float, float]]:
    """(trainer's reported epsilon, PLD epsilon) per setting, computed once."""
    return {
        s.name: (
            trainer_epsilon(s.q, s.sigma, s.steps, s.delta),
            pld_epsilon(s.q, s.sigma, s.steps, s.delta),
        )
        for s in SETTINGS
    }


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_reported_epsilon_agrees_with_pld(
    setting: Setting, epsilons: dict[str, tuple[float, float]]
) -> None:
    reported, reference = epsilons[setting.name]
    assert 0.3 < reference < 12, "settings are meant to span epsilon ~0.5 to ~10"
    # A bound: never below the independent accountant (PLD's own discretization aside).
    assert reported >= reference * (1 - 1e-3), (setting, reported, reference)
    assert agrees(reported, reference), (setting, reported, reference)


def test_epsilon_range_and_strict_agreement(epsilons: dict[str, tuple[float, float]]) -> None:
    """The settings span epsilon ~0.5..~10, and at least 8 agree within 1% outright."""
    references = [ref for _, ref in epsilons.values()]
    assert min(references) < 0.6 and max(references) > 9.5
    strict = [n for n, (rep, ref) in epsilons.items() if abs(rep - ref) <= REL_TOL * ref]
    assert len(strict) >= 8, strict
    assert {"user-2000-patients-b32", "user-500-patients-b25"} <= set(strict)


SOLVE = [
    # (name, q, T, target epsilon, delta): the example job at N=1000, and a user-level job.
    ("example-N1000", 64 / 1000, 32, 8.0, 1e-5),
    ("q0.01-1k-steps", 0.01, 1_000, 3.0, 1e-5),
    ("q0.05-eps2", 0.05, 200, 2.0, 1e-5),
    ("user-2000-patients-eps1", 32 / 2000, 186, 1.0, 1e-6),
]


@pytest.mark.parametrize(
    ("name", "q", "steps", "target", "delta"), SOLVE, ids=[s[0] for s in SOLVE]
)
def test_solved_noise_meets_the_target_under_pld(
    name: str, q: float, steps: int, target: float, delta: float
) -> None:
    privacy = PrivacyConfig(target_epsilon=target, delta=delta)
    sigma = dp.solve_noise_multiplier(privacy, q, steps)
    eps = pld_epsilon(q, sigma, steps, delta)
    assert eps <= target, (name, sigma, eps)
    assert eps >= target * 0.98, (name, sigma, eps)  # not wastefully over-noised
