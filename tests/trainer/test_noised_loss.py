"""The training loss leaves the pod only as a DP release whose cost is in the epsilon:
clipped per-unit losses plus secret Gaussian noise, every k steps, composed with DP-SGD
by the accountant so that the total still meets the target."""

from __future__ import annotations

from pathlib import Path

import torch

from sealtune_api.trainer_config import PrivacyConfig, TrainingConfig
from sealtune_trainer import dp
from sealtune_trainer.data import Example
from sealtune_trainer.model_loading import add_lora, load_base_model
from sealtune_trainer.randomness import SecretRandomness
from sealtune_trainer.training import Trainer, make_plan

TC = TrainingConfig(rank=2, batch_size=4, micro_batch_size=4, epochs=1, target_modules=["q_proj"])
PC = PrivacyConfig(target_epsilon=4.0, delta=1e-3, loss_release_interval=3)
EXAMPLES = [Example([1, *range(5 + i % 3, 12)], [-100, *range(5 + i % 3, 12)]) for i in range(32)]


def _run(tiny_model: Path, key: bytes) -> tuple[Trainer, list[tuple[int, float]]]:
    plan = make_plan(len(EXAMPLES), TC, PC)
    torch.manual_seed(0)
    model = add_lora(load_base_model(tiny_model, TC, "cpu"), TC)
    rnd = SecretRandomness.derive(key, "uid")
    trainer = Trainer(model, EXAMPLES, TC, PC, plan, pad_id=0, randomness=rnd)
    released: list[tuple[int, float]] = []
    trainer.run(lambda s: released.append((s.step, s.noised_loss)) if s.noised_loss else None)
    return trainer, released


def test_loss_releases_are_noised_counted_and_within_the_budget(tiny_model: Path) -> None:
    trainer, released = _run(tiny_model, b"\x05" * 32)
    plan = trainer.plan
    assert plan.loss_noise_multiplier is not None and plan.loss_noise_multiplier > 0
    assert [s for s, _ in released] == [3, 6, plan.total_steps]  # every 3 steps and the last
    assert dp.loss_releases(plan.total_steps, 3) == len(released) == trainer.loss_releases_done()
    total = trainer.epsilon()
    assert 0.95 * PC.target_epsilon <= total <= PC.target_epsilon  # composed, still the target
    shares = trainer.epsilon_shares()
    assert 0 < shares["trainingLoss"] < shares["adapter"] < total
    # the same job key reproduces the releases; another key draws other noise
    _, again = _run(tiny_model, b"\x05" * 32)
    _, other = _run(tiny_model, b"\x06" * 32)
    assert again == released and [v for _, v in other] != [v for _, v in released]


def test_without_release_nothing_is_released_and_sgd_gets_the_whole_budget() -> None:
    off = PrivacyConfig(target_epsilon=4.0, delta=1e-3, release_loss=False)
    plan_off = make_plan(len(EXAMPLES), TC, off)
    plan_on = make_plan(len(EXAMPLES), TC, PC)
    assert plan_off.loss_noise_multiplier is None and plan_off.loss_release_interval == 0
    assert plan_off.noise_multiplier is not None and plan_on.noise_multiplier is not None
    assert plan_off.noise_multiplier <= plan_on.noise_multiplier  # releasing costs some noise


def test_release_steps_are_accounted_as_one_joint_mechanism() -> None:
    """Helper-found under-count: the loss was accounted as separately sampled, but it reads
    the same Poisson batch as the gradient. Joint accounting must bound both separately."""
    from sealtune_trainer.dp import composed_epsilon, joint_noise_multiplier, release_history

    sigma, loss_sigma, q, steps, releases = 1.0, 1.5, 0.05, 100, 10
    joint = joint_noise_multiplier(sigma, loss_sigma)
    assert joint < min(sigma, loss_sigma)
    hist = release_history(sigma, loss_sigma, q, steps, releases)
    assert hist == [(sigma, q, steps - releases), (joint, q, releases)]
    correct = composed_epsilon("prv", hist, 1e-5)
    sgd_only = composed_epsilon("prv", [(sigma, q, steps)], 1e-5)
    assert correct > sgd_only
